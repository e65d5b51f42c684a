"""The sketched eNTK: unbiased for K, error shrinking like k^(-1/2), seeded, recorded in the kernel file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ntkft.errors import ConfigError
from ntkft.kernel import kernel_matrix
from ntkft.kernel.sketch import allocate
from ntkft.models import Readout, load_model
from ntkft.tasks import encode, load_task, subsample


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def case(request, data_dir):
    m = load_model(request.param, dtype=torch.float64)
    r = Readout.from_loaded(m)
    x = encode(m.tokenizer, m.kind, subsample(load_task("stsb", "train", data_dir), 6, seed=0), max_length=24)
    return r, x, kernel_matrix(r, x, progress=False)


def _sketch(r, x, k, seed):
    return kernel_matrix(r, x, method="sketch", sketch_dim=k, seed=seed, progress=False)


def test_unbiased(case):
    r, x, exact = case
    draws = [_sketch(r, x, 256, s) for s in range(32)]
    single = np.mean([rel(k, exact) for k in draws])
    mean = torch.stack(draws).mean(0)
    assert rel(mean, exact) <= 0.45 * single  # ~1/sqrt(32) = 0.18 of one draw's error for an unbiased sketch
    assert all(torch.allclose(k, k.T) for k in draws[:3])


def test_error_shrinks_like_inverse_sqrt_k(case):
    r, x, exact = case
    ks = [256, 1024, 4096]
    errs = [np.mean([rel(_sketch(r, x, k, s), exact) for s in range(4)]) for k in ks]
    slope = np.polyfit(np.log(ks), np.log(errs), 1)[0]
    assert -0.8 <= slope <= -0.3, (errs, slope)
    assert errs[-1] < errs[0] / 2.5


def test_seeded(case):
    r, x, _ = case
    assert torch.equal(_sketch(r, x, 128, 7), _sketch(r, x, 128, 7))
    assert not torch.equal(_sketch(r, x, 128, 7), _sketch(r, x, 128, 8))


def test_allocation_and_too_small_dimension(case):
    assert allocate(10, [1.0, 0.0, 3.0]) == [3, 1, 6] and sum(allocate(1000, [5, 1, 1, 1])) == 1000
    r, x, _ = case
    with pytest.raises(ConfigError, match="sketch_dim") as e:
        _sketch(r, x, 3, 0)
    assert e.value.param == "sketch_dim"


def test_kernel_file_records_the_sketch(tmp_path, data_dir):
    from ntkft.kernel import load_kernel_file
    from ntkft.pipeline import compute_kernel_file

    kf = compute_kernel_file("tiny-bert", "stsb", n=5, max_length=16, method="sketch", sketch_dim=512, out=tmp_path,
                             progress=False)
    back = load_kernel_file(tmp_path)
    assert back.meta["method"] == "sketch" and back.meta["sketch"]["dim"] == 512
    exact = compute_kernel_file("tiny-bert", "stsb", n=5, max_length=16, progress=False)
    assert 0 < rel(kf.K, exact.K) < 1 and math.isfinite(float(kf.K.sum()))


def test_spectrum_says_a_kernel_is_a_sketch(tmp_path, data_dir, capsys):
    from conftest import run_cli
    from ntkft.pipeline import compute_kernel_file

    compute_kernel_file("tiny-bert", "stsb", n=16, max_length=16, method="sketch", sketch_dim=256,
                        out=tmp_path / "k", progress=False)
    code, out, err = run_cli(["spectrum", str(tmp_path / "k"), "--out", str(tmp_path / "s"), "--ci-draws", "20"], capsys)
    assert code == 0, err
    assert "sketched eNTK (k = 256" in out
    assert json.loads((tmp_path / "s" / "spectrum.json").read_text())["stsb"]["sketch"]["dim"] == 256


def test_a_sketch_smaller_than_n_has_rank_k_in_its_spectrum(data_dir):
    """K = S S^T is summed in float64, so a float32 model's sketch with k < N has at most k positive eigenvalues
    above the spectrum's floor (a float32 product left ~1e-7 noise there, which the decay fits took as a tail)."""
    from ntkft.spectrum import eigenvalues

    m = load_model("tiny-bert")  # float32
    r = Readout.from_loaded(m)
    x = encode(m.tokenizer, m.kind, subsample(load_task("stsb", "train", data_dir), 40, seed=0), max_length=24)
    k = _sketch(r, x, 24, 0)
    assert 10 <= int((eigenvalues(k.numpy()) > 0).sum()) <= 24  # (a layer the readout never reaches adds zeros)
