"""Large N, exact, in bounded memory and disk: layer groups (one forward/backward per group) and spilled factors
equal the in-memory factored kernel; measured memory and disk stay within the budgets; a killed run resumes."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest
import torch

from conftest import killed_on_call
from ntkft.kernel import Inputs, Method, Options, kernel_matrix, plan_units, select_params
from ntkft.kernel.checkpoint import Checkpoint
from ntkft.kernel.contract import differentiating
from ntkft.models import Readout, load_model
from ntkft.tasks import encode, load_task, subsample


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def tiny(data_dir):
    m = load_model("tiny-llama", dtype=torch.float64)
    r = Readout.from_loaded(m)
    x = encode(m.tokenizer, m.kind, subsample(load_task("stsb", "train", data_dir), 24, seed=5), max_length=24)
    return r, x


def _plan(r, x, **kw):
    sel = select_params(r, "all")
    with differentiating(r, sel):
        return plan_units(r, Inputs.of(x, "x1"), None, sel, Method.FACTORED, Options(**kw))[1]


def _feature_bytes(r, x) -> int:
    return _plan(r, x, max_memory=2**30, batch_size=2).info["feature_bytes"]


def _budget(r, x, room: float) -> int:
    """The max_memory that leaves `room` bytes for factors after one batch in flight, K and the Gram chunk (1/32)."""
    info = _plan(r, x, max_memory=2**30, batch_size=2).info
    budget = int((room + info["batch_bytes"] + info["k_bytes"]) * 32 / 30) + 1
    assert budget >= 2 * info["batch_bytes"], "the test's batch would shrink"
    return budget


def test_layer_groups_in_memory_equal_one_pass(tiny):
    r, x = tiny
    ref = kernel_matrix(r, x, progress=False, batch_size=2)
    need = _feature_bytes(r, x)
    budget = _budget(r, x, 0.35 * need)  # room for 35% of the factors: at least three groups
    plan = _plan(r, x, max_memory=budget, max_disk=0, batch_size=2)
    assert plan.info["groups"] >= 3 and not plan.spill
    k = kernel_matrix(r, x, progress=False, batch_size=2, max_memory=budget, max_disk=0)
    assert rel(k, ref) <= 1e-10


def test_spilled_layer_groups_respect_the_disk_budget(tiny, tmp_path, monkeypatch):
    r, x = tiny
    ref = kernel_matrix(r, x, progress=False, batch_size=2)
    need = _feature_bytes(r, x)
    disk = need // 3
    budget = _budget(r, x, need / 4)
    plan = _plan(r, x, max_memory=budget, max_disk=disk, batch_size=2)
    assert plan.spill and plan.info["groups"] >= 3
    peak = {"bytes": 0}
    real = Checkpoint.put

    def put(self, name, tensors, meta=None, durable=True):
        real(self, name, tensors, meta, durable)
        peak["bytes"] = max(peak["bytes"], self.nbytes())

    monkeypatch.setattr(Checkpoint, "put", put)
    k = kernel_matrix(r, x, progress=False, batch_size=2, max_memory=budget, max_disk=disk, checkpoint_dir=tmp_path)
    k_bytes = k.numel() * 8 + 4096
    assert 0 < peak["bytes"] <= disk + k_bytes, (peak, disk)
    assert rel(k, ref) <= 1e-10
    assert not tmp_path.exists()


def test_killed_layer_group_run_resumes(tiny, tmp_path, monkeypatch):
    from ntkft.kernel import factored

    r, x = tiny
    need = _feature_bytes(r, x)
    kw = dict(batch_size=2, max_memory=_budget(r, x, need / 4), max_disk=need // 3)
    uninterrupted = kernel_matrix(r, x, progress=False, **kw)
    groups = _plan(r, x, **kw).info["groups"]
    batches = len(_plan(r, x, **kw).passes[0].produce)
    real = factored.capture
    # killed in the second pass, after the first pass's Gram units were summed and its factors removed
    monkeypatch.setattr(factored, "capture", killed_on_call(real, batches + 2))
    with pytest.raises(KeyboardInterrupt):
        kernel_matrix(r, x, progress=False, checkpoint_dir=tmp_path, **kw)
    state = json.loads((tmp_path / "ntkft-checkpoint.json").read_text())
    assert "accumulator.safetensors" in state["files"] and groups >= 2
    assert not any(f.startswith("f0-") for f in state["files"] if (tmp_path / f).exists())
    calls = {"n": 0}

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(factored, "capture", counting)
    resumed = kernel_matrix(r, x, progress=False, checkpoint_dir=tmp_path, **kw)
    assert calls["n"] < groups * batches  # the first pass was not recomputed
    assert torch.equal(resumed, uninterrupted)


def test_too_small_budgets_are_clear_errors(tiny):
    from ntkft.errors import KernelError

    r, x = tiny
    one_batch = _plan(r, x, max_memory=2**30, batch_size=2).info["batch_bytes"]
    with pytest.raises(KernelError, match="max_memory .* too small"):
        kernel_matrix(r, x, progress=False, batch_size=2, max_memory=one_batch // 4, max_disk=0)


MEASURE = r"""
import json, sys, torch
torch.set_num_threads(1)
from transformers import LlamaConfig, LlamaModel
from ntkft.kernel import kernel_matrix
from ntkft.models import Readout
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=512, hidden_size=192, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=768, max_position_embeddings=128)
r = Readout(LlamaModel(cfg).eval(), "decoder", 192)
g = torch.Generator().manual_seed(0)
n = int(sys.argv[2])
x = {"input_ids": torch.randint(1, 512, (n, 64), generator=g), "attention_mask": torch.ones(n, 64, dtype=torch.long)}
budget = int(sys.argv[1]) if sys.argv[1] != "none" else None
k = kernel_matrix(r, x, progress=False, max_memory=budget, max_disk=0, batch_size=4)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"peak": hwm * 1024, "trace": float(k.trace())}))
"""


def _measure(budget, n: int = 32) -> dict:
    p = subprocess.run([sys.executable, "-c", MEASURE, str(budget), str(n)], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_measured_memory_stays_within_the_budget():
    """A 3-layer, width-192 model, 32 samples of 64 tokens: ~90 MB of factors. Peak RSS over a 2-sample run
    (same code, same libraries): all factors without a budget, at most the budget with one (layer groups)."""
    base = _measure("none", n=2)["peak"]
    free = _measure("none")
    budget = 40 * 2**20
    tight = _measure(budget)
    assert free["peak"] - base > 2 * budget  # the factors really are bigger than the budget
    assert tight["peak"] - base <= budget * 1.25, (tight["peak"] - base) / 2**20
    assert abs(tight["trace"] - free["trace"]) <= 1e-5 * abs(free["trace"])


def test_gram_chunk_size_changes_nothing_but_speed():
    """The materialised Gram in one chunk per layer (a GPU's choice) or in many (a CPU's) gives the same K, with and
    without symmetry, chunked along outputs (din < dout) or inputs (din > dout), with one or two outputs per sample
    (D has C rows per sample, A one); the chunk follows the device: 1/32 of the budget, on a CPU at most CHUNK_BYTES
    and ROW_BYTES per row; the triangle's row blocks grow with N."""
    from ntkft.kernel.factored import CHUNK_BYTES, ROW_BYTES, _materialised, chunk_bytes, gram_chunk, tri_blocks

    g = torch.Generator().manual_seed(0)
    for (din, dout), c in itertools.product(((12, 20), (20, 12)), (1, 2)):
        batches = [{"L.A": torch.randn(n, t, din, generator=g, dtype=torch.float64),
                    "L.D": torch.randn(n * c, t, dout, generator=g, dtype=torch.float64)}
                   for n, t in ((3, 5), (4, 7), (2, 9))]
        grads = [torch.einsum("td,ta->da", b["L.D"][i], b["L.A"][i // c]).reshape(-1) for b in batches
                 for i in range(b["L.D"].shape[0])]
        j = torch.stack(grads)
        for sym in (True, False):
            cols = batches if sym else batches[:2]
            n_c = sum(b["L.D"].shape[0] for b in cols)
            ref = j @ j[:n_c].T
            for chunk in (12 * 9 * c * 8, 1 << 30):  # one row of 12 for every sample at a time; everything at once
                k = torch.zeros(9 * c, n_c, dtype=torch.float64)
                _materialised(batches, cols, "L.A", "L.D", sym, k, chunk)
                k = torch.triu(k) + torch.triu(k, 1).T if sym else k
                assert float((k - ref).norm() / ref.norm()) <= 1e-12, (din, dout, c, sym, chunk)
    assert [tri_blocks(n) for n in (16, 100, 400, 1000, 10**6)] == [1, 2, 4, 6, 8]
    assert gram_chunk(CHUNK_BYTES, 2000, "cpu") == CHUNK_BYTES and gram_chunk(CHUNK_BYTES, 16, "cpu") == 4 << 20
    assert gram_chunk(CHUNK_BYTES, 100, "cpu") == 100 * ROW_BYTES and gram_chunk(1 << 30, 16, "cuda") == 1 << 30
    assert chunk_bytes(64 * 2**30, "cpu") == CHUNK_BYTES and chunk_bytes(64 * 2**30, "cuda") == 2 * 2**30


def test_later_layer_groups_start_from_cached_blocks(tiny, monkeypatch, caplog):
    """With several layer groups the first pass caches the output of the last block below each later group, and
    that group's pass starts there: the blocks below do not run again, K is unchanged. A cached output that
    would change f (here: corrupted) is caught on the batch, which reruns the whole forward, as do the rest."""
    from ntkft.kernel import factored

    r, x = tiny
    ref = kernel_matrix(r, x, progress=False, batch_size=2)
    need = _feature_bytes(r, x)
    kw = dict(batch_size=2, max_memory=_budget(r, x, 0.6 * need), max_disk=0)
    plan = _plan(r, x, **kw)
    batches = len(plan.passes[0].produce)
    assert plan.info["groups"] == 2 and plan.info["skipped_blocks"] == {1: 1}
    calls = {"n": 0}
    first_mlp = r.backbone.layers[0].mlp
    handle = first_mlp.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        k = kernel_matrix(r, x, progress=False, **kw)
        assert calls["n"] == 1 + batches  # the probe and the first pass; the second starts after block 0
        assert rel(k, ref) <= 1e-10
        real = factored._skipping
        monkeypatch.setattr(factored, "_skipping", lambda blocks, cut, out: real(blocks, cut, out * 0.5))
        calls["n"] = 0
        k = kernel_matrix(r, x, progress=False, **kw)
    finally:
        handle.remove()
    assert rel(k, ref) <= 1e-10
    assert calls["n"] == 1 + 2 * batches and "every pass now runs the whole forward" in caplog.text


def test_default_cpu_batches_hold_at_most_batch_bytes_of_factors(tiny, monkeypatch):
    from ntkft.kernel import factored

    r, x = tiny
    per_sample = _plan(r, x, max_memory=2**30, batch_size=1).info["batch_bytes"] / 3  # factors of one sample
    assert _plan(r, x, max_memory=2**30).info["batch_size"] == 16  # tiny: far below the cap
    monkeypatch.setattr(factored, "BATCH_BYTES", int(5.5 * per_sample))
    assert _plan(r, x, max_memory=2**30).info["batch_size"] == 5
    assert _plan(r, x, max_memory=2**30, batch_size=12).info["batch_size"] == 12  # asked for: kept
    monkeypatch.setattr(factored, "FEW_BATCHES", 1)  # 24 samples are 2 batches of 16: "many" now, no cap
    assert _plan(r, x, max_memory=2**30).info["batch_size"] == 16


@pytest.mark.parametrize("spill", [False, True])
def test_pair_form_and_materialised_gradients_give_one_kernel(tiny, tmp_path, monkeypatch, spill):
    """Every linear layer in the pair form (layers reading one input, q/k/v and gate/up, share its token Gram) or
    every one through materialised per-sample gradients: the same K to 1e-10 in float64, in memory and read back
    from a spill (where aliased inputs come back as one tensor, so the sharing is found there too)."""
    from ntkft.kernel import factored

    r, x = tiny
    kw: dict = dict(batch_size=4)
    if spill:
        need = _feature_bytes(r, x)
        kw.update(max_memory=_budget(r, x, 0.5 * need), max_disk=2**30)
        assert _plan(r, x, **kw).spill
    widths: list[int] = []
    real = factored._ghost
    monkeypatch.setattr(factored, "_ghost", lambda ai, di, aj, dj, match=False, upper=False: (
        widths.append(len(di) if isinstance(di, list) else 1), real(ai, di, aj, dj, match, upper))[1])
    monkeypatch.setattr(factored, "psg_weight", lambda onednn: 0.0)  # materialised: cheaper than any pair form
    mat = kernel_matrix(r, x, progress=False, **kw)
    assert set(widths) <= {1}  # only the embedding's token matches
    monkeypatch.setattr(factored, "psg_weight", lambda onednn: 1e9)  # pair form everywhere
    widths.clear()
    pair = kernel_matrix(r, x, progress=False, **kw)
    assert 3 in widths and 2 in widths  # q, k, v together; gate and up together
    assert rel(pair, mat) <= 1e-10


def test_a_checkpoint_reads_aliased_tensors_once(tmp_path):
    ckpt = Checkpoint(tmp_path / "c", {"k": 1})
    a = torch.arange(6.0).reshape(2, 3)
    ckpt.put("u", {"q.A": a, "q.D": a + 1}, {"alias": {"k.A": "q.A", "v.A": "q.A"}})
    got, _ = ckpt.get("u", ["q.A", "k.A", "v.A", "q.D", "missing"])
    assert set(got) == {"q.A", "k.A", "v.A", "q.D"} and torch.equal(got["v.A"], a)
    assert got["q.A"] is got["k.A"] is got["v.A"] and got["q.D"] is not got["q.A"]


def test_a_kernel_run_freezes_the_objects_alive_before_it(tiny, monkeypatch):
    """The garbage collector skips the objects alive at the start (gc.freeze) for the run's duration, nested runs
    included, and gets them back afterwards; K is the same."""
    import gc

    from ntkft.kernel import api
    from ntkft.kernel.engine import frozen_gc

    r, x = tiny
    seen: list[int] = []
    real = api.execute
    monkeypatch.setattr(api, "execute", lambda *a, **k: (seen.append(gc.get_freeze_count()), real(*a, **k))[1])
    before = gc.get_freeze_count()
    k = kernel_matrix(r, x, progress=False, batch_size=4)
    assert seen and seen[0] > before and gc.get_freeze_count() == before
    with frozen_gc():
        inner = gc.get_freeze_count()
        k2 = kernel_matrix(r, x, progress=False, batch_size=4)
        assert gc.get_freeze_count() > inner // 2  # the inner run did not unfreeze the outer one's objects
    assert gc.get_freeze_count() == before and torch.equal(k, k2)


def test_pair_form_of_a_batch_with_itself_needs_only_its_upper_triangle():
    """_ghost with upper=True equals the full tile on and above the diagonal (several outputs per sample, lists of
    D, token matches), computing less below it."""
    from ntkft.kernel.factored import _ghost

    g = torch.Generator().manual_seed(1)
    for n, c, match in ((7, 1, False), (5, 2, False), (6, 1, True)):
        a = torch.randint(0, 9, (n, 4), generator=g) if match else torch.randn(n, 4, 6, generator=g, dtype=torch.float64)
        ds = [torch.randn(n * c, 4, w, generator=g, dtype=torch.float64) for w in (3, 5)]
        d = ds[0] if match else ds
        full = _ghost(a, d, a, d, match=match)
        half = _ghost(a, d, a, d, match=match, upper=True)
        up = torch.triu(torch.ones_like(full, dtype=torch.bool))
        assert torch.allclose(half[up], full[up], rtol=1e-12, atol=0) and (half[~up] == 0).any(), (n, c, match)
