"""The GPU path: inputs and factors on the device, float64 K accumulated on the device or the host (skipped
without CUDA)."""

from __future__ import annotations

import pytest
import torch

from ntkft.kernel import kernel_matrix
from ntkft.models import Readout, load_model
from ntkft.tasks import encode, load_task, subsample

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def case(data_dir):
    m = load_model("tiny-llama", dtype=torch.float64)
    r = Readout.from_loaded(m)
    x = encode(m.tokenizer, m.kind, subsample(load_task("stsb", "train", data_dir), 6, seed=0), max_length=24)
    return r, x, kernel_matrix(r, x, progress=False, batch_size=2)


@cuda
@pytest.mark.parametrize("method", ["factored", "jacobian"])
@pytest.mark.parametrize("accumulate", ["host", "device"])
def test_cuda_equals_cpu(case, method, accumulate):
    r, x, ref = case
    r.to("cuda")
    try:
        k = kernel_matrix(r, x, method=method, device="cuda", accumulate=accumulate, progress=False, batch_size=2)
    finally:
        r.to("cpu")
    assert k.device.type == "cpu" and k.dtype == torch.float64
    assert rel(k, ref) <= 1e-6


@cuda
def test_cuda_spilled_factors_and_sketch(case, tmp_path):
    r, x, ref = case
    r.to("cuda")
    try:
        k = kernel_matrix(r, x, device="cuda", progress=False, batch_size=2, max_memory=2**21,
                          checkpoint_dir=tmp_path)
        s = kernel_matrix(r, x, method="sketch", sketch_dim=4096, device="cuda", progress=False)
    finally:
        r.to("cpu")
    assert rel(k, ref) <= 1e-6 and rel(s, ref) < 0.5


def test_device_mismatch_is_a_clear_error(case):
    from ntkft.errors import ConfigError

    r, x, _ = case
    with pytest.raises(ConfigError) as e:
        kernel_matrix(r, x, device="cuda:0" if torch.cuda.is_available() else "cuda", progress=False)
    assert e.value.param == "device"
