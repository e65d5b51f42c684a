"""Fine-tuned checkpoints: save_finetuned / load_finetuned round trips, the folder forms accepted, safe replacement."""

from __future__ import annotations

import json

import pytest
import torch

from ntkft.errors import ModelError
from ntkft.models.checkpoint import load_finetuned, read_head, save_finetuned
from ntkft.pipeline import build_readout


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[3, 3:] = 0
    return ids, mask


def _perturb(module: torch.nn.Module, seed: int, scale: float = 0.02) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-gpt2", "tiny-llama"])
def test_round_trip_gives_the_same_outputs(tmp_path, model):
    loaded, r = build_readout(model, out_dim=3, seed=4)
    _perturb(r, 1)
    info = {"setting": "full", "layers": None, "task": "rte", "base_model": model}
    save_finetuned(r, loaded.tokenizer, tmp_path / "ck", info)
    l2, r2, got = load_finetuned(tmp_path / "ck")
    ids, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(r2(ids, mask), r(ids, mask), rtol=0, atol=1e-6)
    assert l2.kind == loaded.kind and r2.out_dim == 3
    assert got["task"] == "rte" and got["kind"] == loaded.kind and got["out_dim"] == 3
    assert json.loads((tmp_path / "ck" / "ntkft.json").read_text())["base_model"] == model


def test_truncated_backbone_round_trip(tmp_path):
    loaded, r = build_readout("tiny-gpt-neo", layers=1, out_dim=1, seed=2)
    _perturb(r, 3)
    save_finetuned(r, loaded.tokenizer, tmp_path / "ck", {"setting": "head", "layers": 1, "task": "stsb"})
    l2, r2, info = load_finetuned(tmp_path / "ck")
    assert l2.num_layers == 1 and info["layers"] == 1
    ids, mask = _inputs(1)
    with torch.no_grad():
        torch.testing.assert_close(r2(ids, mask), r(ids, mask), rtol=0, atol=1e-6)


def test_run_folder_plain_dir_and_old_layout(tmp_path):
    loaded, r = build_readout("tiny-bert", out_dim=2, seed=0)
    _perturb(r, 5)
    run = tmp_path / "run"
    save_finetuned(r, loaded.tokenizer, run / "model", {"task": "sst2"})
    (run / "config.json").write_text(json.dumps({"task": "sst2", "model": "tiny-bert"}))  # a run folder's config
    _, r2, info = load_finetuned(run)
    assert info["task"] == "sst2" and r2.out_dim == 2
    # the layout Trainer.save_model wrote before this module existed
    old = tmp_path / "old"
    r.backbone.save_pretrained(old, safe_serialization=True)
    loaded.tokenizer.save_pretrained(old)
    from safetensors.torch import save_file

    save_file({"weight": r.head.weight.detach().contiguous(), "bias": r.head.bias.detach().contiguous()},
              str(old / "head.safetensors"))
    (old / "ntkft.json").write_text(json.dumps({"setting": "full", "layers": None, "task": "sst2",
                                                "base_model": "tiny-bert", "kind": "encoder", "out_dim": 2}))
    _, r3, _ = load_finetuned(old)
    ids, mask = _inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(r3(ids, mask), r(ids, mask), rtol=0, atol=1e-6)
    # a plain HF directory: no head, so the seeded random scalar head
    plain = tmp_path / "plain"
    r.backbone.save_pretrained(plain, safe_serialization=True)
    loaded.tokenizer.save_pretrained(plain)
    _, r4, info4 = load_finetuned(plain)
    assert info4["head"] == "random" and r4.out_dim == 1


def test_replaces_only_its_own_folders(tmp_path):
    loaded, r = build_readout("tiny-bert", out_dim=2, seed=0)
    dst = tmp_path / "ck"
    save_finetuned(r, loaded.tokenizer, dst, {"task": "a"})
    _perturb(r, 9)
    save_finetuned(r, loaded.tokenizer, dst, {"task": "b"})  # an ntkft checkpoint is replaced whole
    assert json.loads((dst / "ntkft.json").read_text())["task"] == "b"
    torch.testing.assert_close(read_head(dst / "head.safetensors")["weight"], r.head.weight.detach())
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ModelError, match="not an ntkft checkpoint"):
        save_finetuned(r, loaded.tokenizer, foreign, {"task": "x"})
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ntkft-")]  # no temporary folders left


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(ModelError, match="no such checkpoint"):
        load_finetuned(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a checkpoint"):
        load_finetuned(tmp_path / "empty")
    loaded, r = build_readout("tiny-bert", out_dim=2, seed=0)
    save_finetuned(r, loaded.tokenizer, tmp_path / "ck", {"task": "rte"})
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2, 7)}, str(tmp_path / "ck" / "head.safetensors"))
    with pytest.raises(ModelError) as e:
        load_finetuned(tmp_path / "ck")
    assert "bias" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_real_minilm_run_folder_round_trip(tmp_path, data_dir):
    """A real (short) MiniLM fine-tuning run: its saved model reproduces the run's own test metrics."""
    from ntkft.finetune import FinetuneConfig, finetune
    from ntkft.tasks import encode, load_task, subsample, task_metrics

    cfg = FinetuneConfig(model="minilm-l6", task="rte", n_train=32, n_test=24, max_steps=2, batch_size=8,
                         max_length=32, lr=1e-4)
    res = finetune(cfg, tmp_path / "run", progress=False)
    loaded, r, info = load_finetuned(tmp_path / "run")
    assert info["task"] == "rte" and info["kind"] == "encoder" and r.out_dim == 2
    test = subsample(load_task("rte", "validation"), 24, seed=0)
    enc = encode(loaded.tokenizer, loaded.kind, test, max_length=32)
    with torch.no_grad():
        out = r(enc["input_ids"], enc["attention_mask"])
    got = task_metrics("classification", out.numpy(), test.labels, 2)
    assert got["accuracy"] == pytest.approx(res.test_best["accuracy"], abs=1e-9)
    loss = float(torch.nn.functional.cross_entropy(out, torch.as_tensor(test.labels)))
    assert loss == pytest.approx(res.test_best["loss"], rel=1e-4)
