"""The CPU GEMM backend (kernel/gemm.py): oneDNN and torch's matmul agree to float32 rounding wherever the kernel
uses them (products, the layers' forward and input gradient, whole kernels on tiny and real models); the
NTKFT_GEMM choice; weights whose gradient is needed keep torch's path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ntkft.errors import ConfigError
from ntkft.kernel import gemm, kernel_matrix
from ntkft.models import Readout, load_model
from ntkft.tasks import encode, load_task, subsample

needs_onednn = pytest.mark.skipif(gemm._op() is None, reason="this torch build has no oneDNN linear")


def rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def test_choice_from_the_environment(monkeypatch):
    monkeypatch.setattr(gemm, "_chosen", None)
    monkeypatch.setenv("NTKFT_GEMM", "torch")
    assert gemm.backend() == "torch" and not gemm.fast(torch.ones(2, 2))
    monkeypatch.setattr(gemm, "_chosen", None)
    monkeypatch.setenv("NTKFT_GEMM", "mkl")
    with pytest.raises(ConfigError, match="NTKFT_GEMM"):
        gemm.backend()
    monkeypatch.setattr(gemm, "_chosen", None)
    monkeypatch.setenv("NTKFT_GEMM", "auto")
    assert gemm.backend() in ("torch", "onednn")  # timed: either may win on this CPU
    assert not gemm.fast(torch.ones(2, 2, dtype=torch.float64))  # float64 always takes torch's path


def test_a_bad_choice_stops_a_kernel_in_one_line(monkeypatch):
    monkeypatch.setattr(gemm, "_chosen", None)
    monkeypatch.setenv("NTKFT_GEMM", "fastest")
    m = load_model("tiny-bert")
    x = encode(m.tokenizer, m.kind, [("a b", "c")], max_length=8)
    with pytest.raises(ConfigError, match="NTKFT_GEMM: must be one of auto, torch, onednn"):
        kernel_matrix(Readout.from_loaded(m, out_dim=1), x, progress=False)


@needs_onednn
def test_products_agree_in_every_layout():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(70, 300, generator=g)
    cases = {"dense": (torch.randn(40, 256, generator=g), base[:, :256].contiguous()),
             "weight with row gaps": (torch.randn(40, 256, generator=g), base[:, :256]),
             "transposed weight": (torch.randn(40, 70, generator=g), base[:, :70].contiguous().T),
             "input with row gaps": (base[:40, :256], torch.randn(50, 256, generator=g)),
             "transposed input with gaps": (base[:, 10:50].T, torch.randn(30, 70, generator=g))}
    for name, (x, w) in cases.items():
        ref = x.double() @ w.double().T
        with gemm.using("onednn"):
            a = gemm.mm_t(x, w)
            assert torch.equal(a, gemm.mm_t(x, w)), name  # one path, rerun: bit-identical
        with gemm.using("torch"):
            b = gemm.mm_t(x, w)
        assert rel(a, ref) < 1e-6 and rel(b, ref) < 1e-6, name


@needs_onednn
def test_layer_forward_and_input_gradient():
    g = torch.Generator().manual_seed(1)
    w = torch.nn.Parameter(torch.randn(24, 16, generator=g))
    b = torch.nn.Parameter(torch.randn(24, generator=g))
    x = torch.randn(3, 5, 16, generator=g, requires_grad=True)
    gy = torch.randn(3, 5, 24, generator=g)
    with gemm.using("onednn"):
        y = gemm.linear_grad_input(x, w, b)
        assert y is not None
        (gx,) = torch.autograd.grad(y, x, gy)
        assert gemm.linear_grad_input(x.double(), w.double(), None) is None  # float64: torch's own path
    y_ref = F.linear(x, w, b)
    (gx_ref,) = torch.autograd.grad(y_ref, x, gy)
    assert rel(y, y_ref) < 1e-6 and rel(gx, gx_ref) < 1e-6
    (gw,) = torch.autograd.grad(gemm_out(x, w, b).sum(), w, allow_unused=True)
    assert gw is None  # no weight gradient: only for callers that never ask for one

    class Sub(torch.Tensor):
        pass

    with gemm.using("onednn"):  # what oneDNN cannot take goes back to torch's own F.linear
        assert gemm.linear_grad_input(x[0, 0], w, b) is None  # 1-d input
        assert gemm.linear_grad_input(x[:0], w, b) is None  # empty
        assert gemm.linear_grad_input(x.detach().as_subclass(Sub), w, b) is None


def gemm_out(x, w, b):
    with gemm.using("onednn"):
        return gemm.linear_grad_input(x, w, b)


@pytest.fixture(scope="module")
def pairs(data_dir):
    return subsample(load_task("stsb", "train", data_dir), 5, seed=0)


@needs_onednn
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert", "tiny-gpt-neo", "tiny-gpt2"])
def test_kernels_agree_across_backends_float32(name, pairs):
    m = load_model(name)  # float32: the layers and the Gram go through the chosen GEMM
    r = Readout.from_loaded(m, out_dim=2, seed=0)
    x = encode(m.tokenizer, m.kind, pairs, max_length=24)
    ref = kernel_matrix(r.double(), {k: v for k, v in x.items()}, method="jacobian", progress=False)
    r.float()
    with gemm.using("onednn"):
        a = kernel_matrix(r, x, method="factored", progress=False, batch_size=2)
        assert torch.equal(a, kernel_matrix(r, x, method="factored", progress=False, batch_size=2))
    with gemm.using("torch"):
        b = kernel_matrix(r, x, method="factored", progress=False, batch_size=2)
    assert rel(a, ref) < 1e-5 and rel(b, ref) < 1e-5 and rel(a, b) < 1e-5


class _Computed(torch.nn.Module):
    """A layer whose weight is computed from parameters (a scaled matrix): its gradient must reach them."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(d, d) / d ** 0.5)
        self.g = torch.nn.Parameter(torch.rand(d) + 0.5)
        self.lin = torch.nn.Linear(d, d)

    def forward(self, h):
        return self.lin(torch.tanh(F.linear(h, self.w * self.g[:, None])))


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        self.block = _Computed(16)
        self.head = torch.nn.Linear(16, 1)
        self.out_dim = 1

    def forward(self, ids, mask):
        h = self.block(self.emb(ids))
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1)).squeeze(-1)


@needs_onednn
def test_computed_weights_keep_their_gradient():
    torch.manual_seed(0)
    model = _Model().eval()
    ids = torch.randint(1, 50, (5, 7))
    mask = torch.ones(5, 7, dtype=torch.long)
    mask[1, 5:] = 0
    x = {"input_ids": ids, "attention_mask": mask}
    ref = kernel_matrix(model.double(), x, method="jacobian", progress=False)
    model.float()
    with gemm.using("onednn"):
        k = kernel_matrix(model, x, method="factored", progress=False, batch_size=2)
    assert rel(k, ref) < 1e-5


@needs_onednn
def test_real_model_kernels_agree_across_backends(minilm, data_dir):
    r = Readout.from_loaded(minilm, out_dim=1, seed=0)
    x = encode(minilm.tokenizer, minilm.kind, subsample(load_task("rte", "train", data_dir), 4, seed=0),
               max_length=32)
    with gemm.using("onednn"):
        a = kernel_matrix(r, x, method="factored", progress=False)
    with gemm.using("torch"):
        b = kernel_matrix(r, x, method="factored", progress=False)
    assert rel(a, b) < 1e-5


def _planned_gemm(model, x) -> str:
    from ntkft.kernel import Inputs, Method, Options, plan_units, select_params
    from ntkft.kernel.contract import differentiating

    sel = select_params(model, "all")
    with differentiating(model, sel):
        _, plan = plan_units(model, Inputs.of(x, "x1"), None, sel, Method.FACTORED, Options(max_memory=2**30))
    return plan.info["gemm"]


@needs_onednn
def test_small_kernels_keep_torch_unless_named(monkeypatch):
    from ntkft.kernel import factored

    m = load_model("tiny-bert")
    r = Readout.from_loaded(m, out_dim=1)
    x = encode(m.tokenizer, m.kind, [("a b c", "d e"), ("f", "g h")], max_length=8)
    monkeypatch.delenv("NTKFT_GEMM", raising=False)
    monkeypatch.setattr(gemm, "_chosen", None)
    monkeypatch.setattr(gemm, "_calibrate", lambda: "onednn")  # as if oneDNN won the timing here
    assert _planned_gemm(r, x) == "torch"  # far below SMALL_WORK: not worth the timing
    assert gemm._chosen is None  # ... nor the timing
    monkeypatch.setattr(factored, "SMALL_WORK", 0.0)
    assert _planned_gemm(r, x) == "onednn"
    monkeypatch.setattr(factored, "SMALL_WORK", 1e30)
    monkeypatch.setattr(gemm, "_chosen", None)
    monkeypatch.setenv("NTKFT_GEMM", "onednn")  # named: kept whatever the size
    assert _planned_gemm(r, x) == "onednn"
    with gemm.using("torch"):
        assert _planned_gemm(r, x) == "torch"


@needs_onednn
def test_sketch_agrees_across_backends(pairs):
    m = load_model("tiny-llama")
    r = Readout.from_loaded(m, out_dim=1, seed=0)
    x = encode(m.tokenizer, m.kind, pairs, max_length=24)
    ks = {}
    for name in ("onednn", "torch"):
        with gemm.using(name):
            ks[name] = kernel_matrix(r, x, method="sketch", sketch_dim=256, seed=3, progress=False)
    assert rel(ks["onednn"], ks["torch"]) < 1e-5


@needs_onednn
def test_kernel_file_and_checkpoint_key_name_the_library_used(tmp_path, data_dir, monkeypatch):
    from ntkft.kernel import Inputs, Method, Options, factored, plan_units, select_params
    from ntkft.kernel.api import work_key
    from ntkft.kernel.contract import differentiating
    from ntkft.pipeline import compute_kernel_file

    monkeypatch.delenv("NTKFT_GEMM", raising=False)
    monkeypatch.setattr(gemm, "_chosen", None)
    monkeypatch.setattr(gemm, "_calibrate", lambda: "onednn")  # as if oneDNN won the timing here
    kf = compute_kernel_file("tiny-bert", "stsb", n=5, max_length=16, method="factored", out=tmp_path / "small",
                             progress=False)
    assert kf.meta["gemm"] == "torch"  # a small kernel: torch's matmul, whatever the timing says
    monkeypatch.setattr(factored, "SMALL_WORK", 0.0)
    kf = compute_kernel_file("tiny-bert", "stsb", n=5, max_length=16, method="factored", out=tmp_path / "big",
                             progress=False)
    assert kf.meta["gemm"] == "onednn"
    m = load_model("tiny-bert")
    r = Readout.from_loaded(m, out_dim=1)
    x = Inputs.of(encode(m.tokenizer, m.kind, [("a b", "c")], max_length=8), "x1")
    sel = select_params(r, "all")
    with differentiating(r, sel):
        opts = Options(max_memory=2**30)
        _, plan = plan_units(r, x, None, sel, Method.FACTORED, opts)
        assert work_key(r, x, None, sel, Method.FACTORED, plan, opts)["gemm"] == plan.info["gemm"] == "onednn"


@needs_onednn
def test_a_sketch_names_the_library_its_products_use(pairs):
    """float32 products go through the chosen library; a float64 model's never do, and its sketch says torch."""
    for dtype, want in ((torch.float32, "onednn"), (torch.float64, "torch")):
        m = load_model("tiny-llama", dtype=dtype)
        x = encode(m.tokenizer, m.kind, pairs, max_length=24)
        info: dict = {}
        with gemm.using("onednn"):
            kernel_matrix(Readout.from_loaded(m, out_dim=1), x, method="sketch", sketch_dim=64, progress=False, info=info)
        assert info["gemm"] == want, dtype
