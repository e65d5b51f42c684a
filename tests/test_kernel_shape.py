"""The kernel's shape: method registry and protocol, plan / execute / assemble shared by any executor,
a checkpoint that deletes only its own files, the model left as found, budgets validated, run folders."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from ntkft.errors import ConfigError, KernelError
from ntkft.kernel import (
    Accumulator,
    Checkpoint,
    Inputs,
    KernelModel,
    MemoryStore,
    Method,
    Options,
    assemble,
    kernel_matrix,
    plan_units,
    select_params,
)
from ntkft.kernel.contract import check_model, differentiating
from ntkft.kernel.plan import Artifact, bucket
from ntkft.kernel.registry import _REGISTRY, implementation
from ntkft.models import Readout, load_model
from ntkft.tasks import encode, load_task, subsample


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def tiny(data_dir):
    m = load_model("tiny-llama", dtype=torch.float64)
    r = Readout.from_loaded(m)
    x = encode(m.tokenizer, m.kind, subsample(load_task("stsb", "train", data_dir), 7, seed=3), max_length=24)
    return m, r, x


def test_every_method_is_registered_and_meets_the_protocol():
    assert set(_REGISTRY) == set(Method) - {Method.AUTO}
    for m in _REGISTRY:
        cls = implementation(m)
        assert callable(cls.plan) and callable(cls.compute_unit) and hasattr(cls, "exact")


def test_readout_meets_the_model_contract(tiny):
    _, r, _ = tiny
    assert check_model(r) is r  # the runtime check; isinstance on the Protocol cannot see submodules on Python >= 3.12
    missing = [m for m in ("head", "out_dim", "training", "named_parameters", "parameters", "modules", "named_modules",
                           "train", "eval") if not hasattr(r, m)]
    assert not missing and KernelModel.__annotations__.keys() <= {"head", "out_dim", "training"}
    with pytest.raises(KernelError, match="no `head`"):
        kernel_matrix(torch.nn.Linear(2, 2), {"input_ids": torch.ones(1, 2, dtype=torch.long),
                                              "attention_mask": torch.ones(1, 2, dtype=torch.long)})


def test_model_state_restored_on_success_and_on_error(tiny, monkeypatch):
    _, r, x = tiny
    frozen = r.backbone.layers[0].mlp.up_proj.weight
    frozen.requires_grad_(False)
    r.train()
    r.backbone.layers[1].eval()  # a mixed state that model.train(flag) alone would not restore
    before_modes = {n: m.training for n, m in r.named_modules()}
    before_flags = {n: p.requires_grad for n, p in r.named_parameters()}
    kernel_matrix(r, x, params="head", progress=False)
    assert {n: m.training for n, m in r.named_modules()} == before_modes
    assert {n: p.requires_grad for n, p in r.named_parameters()} == before_flags
    from ntkft.kernel import factored

    def boom(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(factored, "capture", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        kernel_matrix(r, x, method="factored", progress=False)
    assert {n: m.training for n, m in r.named_modules()} == before_modes
    assert {n: p.requires_grad for n, p in r.named_parameters()} == before_flags
    frozen.requires_grad_(True)
    r.eval()


def test_units_shared_over_two_ranks_assemble_to_the_same_kernel(tiny, tmp_path):
    """What a distributed executor does: same plan on every rank, units split, one checkpoint, summed accumulators."""
    _, r, x = tiny
    ref = kernel_matrix(r, x, method="factored", progress=False, batch_size=2)
    sel = select_params(r, "all")
    opts = Options(max_memory=2**30, batch_size=2, progress=False)
    with differentiating(r, sel):
        plans = [plan_units(r, Inputs.of(x, "x1"), None, sel, Method.FACTORED, opts) for _ in range(2)]
        assert plans[0][1].digest() == plans[1][1].digest()  # deterministic: every rank builds the same plan
        store = Checkpoint(tmp_path / "shared", {"run": 1})
        accs = [Accumulator(plans[0][1].rows, plans[0][1].cols, store, name=f"acc-rank{k}") for k in range(2)]
        for p_idx in range(len(plans[0][1].passes)):
            for rank, (impl, plan) in enumerate(plans):
                for u in plan.passes[p_idx].produce[rank::2]:
                    art = impl.compute_unit(u, store)
                    assert isinstance(art, Artifact)
                    store.put(u.id, art.tensors, art.meta, durable=False)
            for rank, (impl, plan) in enumerate(plans):
                for u in plan.passes[p_idx].contribute[rank::2]:
                    blk = impl.compute_unit(u, store)
                    accs[rank].add(u.id, blk.row0, blk.col0, blk.values)
                accs[rank].save(force=True)
    k = assemble(plans[0][1], accs[0].k + accs[1].k)
    assert rel(k, ref) <= 1e-12


def test_checkpoint_deletes_only_files_it_listed(tmp_path):
    root = tmp_path / "work"
    root.mkdir()
    (root / "thesis.tex").write_text("mine")
    a = Checkpoint(root, {"model": "m0"})
    a.put("unit-1", {"x": torch.ones(3)})
    assert a.has("unit-1") and torch.equal(a.get("unit-1")[0]["x"], torch.ones(3))
    b = Checkpoint(root, {"model": "m1"})  # another computation: a's files go, the user's stay
    assert not b.has("unit-1") and not (root / "unit-1.safetensors").exists()
    assert (root / "thesis.tex").read_text() == "mine"
    (root / "unit-2.safetensors").write_text("also mine")
    with pytest.raises(KernelError, match="not written by this checkpoint"):
        b.put("unit-2", {"x": torch.zeros(1)})
    assert (root / "unit-2.safetensors").read_text() == "also mine"
    x = torch.arange(6.0)
    b.put("unit-3", {"head": x[:2], "tail": x[2:]})  # views of one storage are written as separate tensors
    assert torch.equal(b.get("unit-3", ["tail"])[0]["tail"], x[2:])
    b.clear()
    assert sorted(p.name for p in root.iterdir()) == ["thesis.tex", "unit-2.safetensors"]
    c = Checkpoint(tmp_path / "empty", {})
    c.put("u", {"x": torch.zeros(1)})
    c.clear()
    assert not (tmp_path / "empty").exists()  # its own folder goes when nothing else is in it


def test_checkpoint_files_are_safetensors_any_reader_loads(tmp_path):
    """ntkft writes units straight from tensor memory; safetensors' own reader must see exactly what its own
    writer would have written, for every dtype a unit can hold, empty and 0-d tensors and views included."""
    from safetensors.torch import load_file, save_file

    x = torch.arange(12.0, dtype=torch.float64).reshape(3, 4)
    ts = {"f64": x, "f32": x.float().t(), "bf16": x.bfloat16()[1], "f16": x.half(), "i64": torch.arange(5),
          "i32": torch.arange(3, dtype=torch.int32), "u8": torch.arange(4, dtype=torch.uint8),
          "bool": torch.tensor([True, False, True]), "empty": torch.empty(0, 7), "scalar": torch.tensor(2.5)}
    ck = Checkpoint(tmp_path / "c", {"k": 1})
    ck.put("u", ts, {"note": "hi"}, durable=True)
    ck.put("v", ts, durable=False)
    save_file({k: v.contiguous() for k, v in ts.items()}, str(tmp_path / "ref.safetensors"))
    ref = load_file(str(tmp_path / "ref.safetensors"))
    for unit in ("u", "v"):
        got = load_file(str(tmp_path / "c" / f"{unit}.safetensors"))
        assert set(got) == set(ts)
        for k, v in ts.items():
            assert got[k].dtype == v.dtype == ref[k].dtype and torch.equal(got[k], ref[k]), k
    assert ck.get("u")[1] == {"note": "hi"}
    with (tmp_path / "c" / "u.safetensors").open("rb") as fh:
        assert int.from_bytes(fh.read(8), "little") % 8 == 0  # the header is padded as the format asks
    ck.put("f8", {"z": torch.zeros(2, dtype=torch.float8_e4m3fn), "a": x})  # beyond the raw writer: safetensors'
    assert ck.get("f8")[0]["z"].dtype == torch.float8_e4m3fn and torch.equal(ck.get("f8")[0]["a"], x)
    with pytest.raises(KernelError, match="cannot store this unit"):
        ck.put("w", {"z": torch.zeros(2, dtype=torch.bits8)})
    assert not any(p.name.startswith(".w") for p in (tmp_path / "c").iterdir())  # no temporary file left


def test_spill_writes_overlap_only_beside_spare_compute(monkeypatch):
    """On a CPU whose cores torch's threads all use, a writer thread would slow every parallel operator."""
    from ntkft.kernel.engine import overlap_writes

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    for cores, spare in ((2, False), (8, True)):
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid, n=cores: set(range(n)), raising=False)
        monkeypatch.setattr("os.cpu_count", lambda n=cores: n)
        assert overlap_writes("cpu") == spare and overlap_writes("cuda:0")


@pytest.mark.parametrize("left", [False, True])
def test_probe_is_a_short_prefix_of_two_samples_padded_like_the_data(left):
    """The layer check runs on the two shortest samples cut to 8 and 12 real tokens: lengths still differ, the
    tokens are each sample's own first ones, and the padding side is the data's."""
    from ntkft.kernel.factored import probe_inputs

    lengths = [30, 9, 14, 9]
    t = max(lengths)
    ids = torch.arange(4 * t).reshape(4, t) + 100
    mask = torch.zeros(4, t, dtype=torch.long)
    for i, n in enumerate(lengths):
        if left:
            mask[i, t - n:] = 1
        else:
            mask[i, :n] = 1
    x = Inputs.of({"input_ids": ids.masked_fill(mask == 0, 7), "attention_mask": mask}, "x1")
    pi, pm = probe_inputs(x)
    assert pm.sum(1).tolist() == [8, 12] and pi.shape == (2, 12)
    for row, src in zip(range(2), (1, 2)):  # the shortest (row 1) and the shortest of another length (row 2)
        real = x.ids[src][x.mask[src].bool()]
        assert torch.equal(pi[row][pm[row].bool()], real[: int(pm[row].sum())])
    assert bool(pm[0, 0] == 0) == left and bool(pm[0, -1] == 0) != left  # the shorter row is padded on that side
    assert (pi[pm == 0] == 7).all()
    one = Inputs.of({"input_ids": ids[:1], "attention_mask": torch.ones(1, t, dtype=torch.long)}, "x1")
    assert probe_inputs(one)[1].sum().item() == 8


def test_memory_store_and_accumulator_resume():
    s = MemoryStore()
    acc = Accumulator(2, 2, s)
    acc.add("u1", 0, 0, torch.ones(1, 2))
    acc.save(force=True)
    again = Accumulator(2, 2, s)
    assert again.has("u1") and not again.has("u2") and again.k.sum() == 2
    again.add("u1", 0, 0, torch.ones(1, 2))  # a unit is summed once
    assert again.k.sum() == 2


def test_length_buckets_cut_where_padding_costs_most():
    assert bucket([5] * 8, 4) == [(0, 4), (4, 8)]
    cuts = bucket([3, 3, 3, 60], 16)
    assert cuts == [(0, 3), (3, 4)]  # the long sample alone: short rows are not padded to 60
    assert sum(b - a for a, b in bucket(list(range(1, 40)), 7)) == 39
    lens = [26, 33, 38, 38, 40, 46, 48, 49, 52, 53, 64, 64, 64, 64, 64, 64]  # MiniLM's 16 RTE pairs
    assert bucket(lens, 16) == [(0, 16)]  # a GPU batch's overhead (8 rows): one batch padded to 64
    assert len(bucket(lens, 16, 1.0)) == 3  # a CPU's (1 row): cut by length


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "4GB"])
def test_max_memory_must_be_positive_and_finite(tiny, bad):
    _, r, x = tiny
    with pytest.raises(ConfigError, match="max_memory") as e:
        kernel_matrix(r, x, max_memory=bad, progress=False)
    assert e.value.param == "max_memory"


def test_bad_options_name_their_argument(tiny):
    _, r, x = tiny
    for kw, param in [({"max_disk": float("nan")}, "max_disk"), ({"batch_size": 0}, "batch_size"),
                      ({"accumulate": "gpu"}, "accumulate"), ({"device": "tpu:7"}, "device"),
                      ({"method": "sketch"}, "sketch_dim"), ({"sketch_dim": 8}, "sketch_dim"),
                      ({"method": "nope"}, "method")]:
        with pytest.raises(ConfigError) as e:
            kernel_matrix(r, x, progress=False, **kw)
        assert e.value.param == param, kw
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            kernel_matrix(r, x, device="cuda", progress=False)


def test_cli_reports_max_memory_gb(tmp_path):
    for bad in ("0", "nan"):
        p = subprocess.run([sys.executable, "-m", "ntkft.cli", "kernel", "--model", "tiny-bert", "--task", "stsb",
                            "--n", "4", "--max-memory-gb", bad, "--out", str(tmp_path / "k")],
                           capture_output=True, text=True, timeout=600)
        lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("ntkft: error")]
        assert p.returncode == 2 and len(lines) == 1 and "--max-memory-gb" in lines[0], p.stderr
        assert "Traceback" not in p.stderr


def _save_tiny(tmp_path, name, seed):
    from transformers import BertConfig, BertModel

    tok = load_model("tiny-bert").tokenizer
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(seed)
    d = tmp_path / name
    BertModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def test_run_folder_refuses_another_model_of_the_same_architecture(tmp_path, data_dir):
    from ntkft.pipeline import compute_kernel_file

    m0, m1 = _save_tiny(tmp_path, "m0", 0), _save_tiny(tmp_path, "m1", 1)
    out = tmp_path / "run"
    k0 = compute_kernel_file(m0, "stsb", n=5, max_length=16, out=out, progress=False)
    again = compute_kernel_file(m0, "stsb", n=5, max_length=16, out=out, progress=False)
    assert torch.equal(again.K, k0.K)  # the finished kernel, returned as is
    (out / "work").mkdir()
    (out / "work" / "thesis.tex").write_text("mine")
    with pytest.raises(ConfigError, match="different"):
        compute_kernel_file(m1, "stsb", n=5, max_length=16, out=out, progress=False)
    k1 = compute_kernel_file(m1, "stsb", n=5, max_length=16, out=out, progress=False, overwrite=True)
    ref1 = compute_kernel_file(m1, "stsb", n=5, max_length=16, progress=False)
    assert rel(k1.K, ref1.K) <= 1e-10 and rel(k1.K, k0.K) > 1e-3
    assert (out / "work" / "thesis.tex").read_text() == "mine"  # never touched
    assert k1.meta["model"] == m1


def test_fresh_folder_with_foreign_files_is_refused(tmp_path, data_dir):
    from ntkft.pipeline import compute_kernel_file

    out = tmp_path / "run"
    (out / "work").mkdir(parents=True)
    (out / "work" / "thesis.tex").write_text("mine")
    with pytest.raises(ConfigError, match="did not write"):
        compute_kernel_file("tiny-bert", "stsb", n=4, max_length=16, out=out, progress=False)
    assert (out / "work" / "thesis.tex").read_text() == "mine"


def test_default_budget_comes_from_available_memory():
    from ntkft.kernel.plan import GiB, available_memory, default_max_memory

    d = default_max_memory()
    assert d % GiB == 0 and GiB <= d <= max(GiB, available_memory())
    assert math.isfinite(d)
