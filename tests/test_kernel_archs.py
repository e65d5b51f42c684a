"""Any Hugging Face model: tiny random checkpoints of architectures the package never names, saved the way hub
checkpoints are (*ForCausalLM / *Model directories) and loaded by path, agree with the jacobian reference in
float64; so do models whose layers are reused, modified in place or subclassed."""

from __future__ import annotations

import pytest
import torch

from ntkft.kernel import Inputs, Method, Options, kernel_matrix, plan_units, select_params
from ntkft.kernel.contract import differentiating
from ntkft.models import Readout, load_model
from ntkft.tasks import encode, load_task, subsample

H = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)


def _configs(v: int, pad: int) -> dict:
    import transformers as tf

    return {
        "opt": (tf.OPTConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                             max_position_embeddings=128, word_embed_proj_dim=32, pad_token_id=pad,
                             bos_token_id=pad, eos_token_id=pad), tf.OPTForCausalLM),
        "gpt_neox": (tf.GPTNeoXConfig(vocab_size=v, rotary_pct=0.5, **H), tf.GPTNeoXForCausalLM),
        "qwen2": (tf.Qwen2Config(vocab_size=v, num_key_value_heads=2, **H), tf.Qwen2ForCausalLM),
        "phi": (tf.PhiConfig(vocab_size=v, partial_rotary_factor=0.5, **H), tf.PhiForCausalLM),
        "gemma": (tf.GemmaConfig(vocab_size=v, num_key_value_heads=1, head_dim=8, **H), tf.GemmaForCausalLM),
        "bloom": (tf.BloomConfig(vocab_size=v, hidden_size=32, n_layer=2, n_head=4), tf.BloomForCausalLM),
        "roberta": (tf.RobertaConfig(vocab_size=v, pad_token_id=pad, **dict(H, max_position_embeddings=130)),
                    tf.RobertaModel),
        "distilbert": (tf.DistilBertConfig(vocab_size=v, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                           max_position_embeddings=128, pad_token_id=pad), tf.DistilBertModel),
    }


ARCHS = ["opt", "gpt_neox", "qwen2", "phi", "gemma", "bloom", "roberta", "distilbert"]


@pytest.fixture(scope="module")
def tok():
    return load_model("tiny-bert").tokenizer


@pytest.fixture(scope="module")
def samples(data_dir):
    return subsample(load_task("stsb", "train", data_dir), 5, seed=4)


def _saved(arch: str, tok, root) -> str:
    cfg, cls = _configs(len(tok), tok.pad_token_id)[arch]
    torch.manual_seed(0)
    model = cls(cfg)
    d = root / arch
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("arch", ARCHS)
def test_default_method_equals_jacobian_on_any_architecture(arch, tok, samples, tmp_path):
    loaded = load_model(_saved(arch, tok, tmp_path), dtype=torch.float64)
    r = Readout.from_loaded(loaded)
    tok.padding_side = "left" if loaded.kind == "decoder" else "right"
    x = encode(tok, loaded.kind, samples, max_length=40)  # the saved WordPiece vocabulary, whatever AutoTokenizer makes of it
    assert (x["attention_mask"] == 0).any()
    if arch == "bloom":  # its custom autograd.Function has no setup_context: torch.func (jacobian) refuses it
        ref = _per_sample_autograd(r, x)
    else:
        ref = kernel_matrix(r, x, method="jacobian", progress=False, batch_size=3)
    k = kernel_matrix(r, x, progress=False, batch_size=2)  # auto
    assert rel(k, ref) <= 1e-6, arch
    sel = select_params(r, "all")
    with differentiating(r, sel):
        _, plan = plan_units(r, Inputs.of(x, "x1"), None, sel, Method.FACTORED, Options(max_memory=2**30))
    assert plan.info["fallback_params"] == 0, plan.info  # every layer in factored form: captured, not fallen back


def _per_sample_autograd(model, x) -> torch.Tensor:
    """An independent reference: one torch.autograd.grad per sample at its own unpadded length, J J^T."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(x["input_ids"].shape[0]):
        m = x["attention_mask"][i].bool()
        f = model(x["input_ids"][i][m][None], x["attention_mask"][i][m][None])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(f.sum(), params)]))
    j = torch.stack(rows)
    return j @ j.T


class _Twice(torch.nn.Module):
    """A backbone whose layers break the one-call, one-module picture."""

    def __init__(self, v: int, d: int = 8) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(v, d, padding_idx=0)
        self.pos = _PosEmb(64, d)
        self.shared = torch.nn.Linear(d, d)  # applied twice
        self.scaled = torch.nn.Linear(d, d)  # its output is scaled in place
        self.norm = torch.nn.LayerNorm(d)

    def forward(self, ids, mask):
        h = self.emb(ids) + self.pos(mask)
        h = torch.tanh(self.shared(h))
        h = torch.tanh(self.shared(h))
        s = self.scaled(h)
        s.mul_(0.5)
        return self.norm(h + s)


class _PosEmb(torch.nn.Embedding):
    """Like OPT's: called with the mask, looks up positions computed inside."""

    def forward(self, mask):
        return super().forward((mask.cumsum(1) - 1).clamp(min=0) + 2)


class _Model(torch.nn.Module):
    def __init__(self, v: int) -> None:
        super().__init__()
        self.backbone = _Twice(v)
        self.head = torch.nn.Linear(8, 1)
        self.out_dim = 1

    def forward(self, ids, mask):
        h = self.backbone(ids, mask)
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1)).squeeze(-1)


def test_reused_inplace_and_subclassed_layers(tok, samples):
    torch.manual_seed(1)
    model = _Model(len(tok)).double().eval()
    x = encode(tok, "encoder", samples, max_length=20)
    ref = kernel_matrix(model, x, method="jacobian", progress=False)
    assert rel(kernel_matrix(model, x, method="factored", progress=False, batch_size=2), ref) <= 1e-9
