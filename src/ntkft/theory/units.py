"""The theory lab's per-unit records as typed results: what `pretrain`, `finetune` and the sweeps' units return,
and what a sweep writes to units/<name>.json and reads back when it resumes. The JSON field names and nesting are
those of the dicts these records replace, so unit files written before still validate; a renamed or missing field
fails where the file is read, in one line naming the file and the field."""

from __future__ import annotations

from pydantic import ConfigDict, model_validator

from .._results import ResultModel
from ..spectrum.decay import DecayFit
from ..stopping.rwy import StopReport


class UnitRecord(ResultModel):
    """A sweep unit's record: its measures and the wall time it took (set by `run_units` once it finishes)."""

    seconds: float = 0.0


class PretrainMeasures(ResultModel):
    """GD from random init on the source task: its fit and how far the weights moved (B.3 step 1)."""

    n_params: int
    source_mse_init: float
    source_mse_pt: float
    source_fit_pt: float  # MSE against the noiseless source function
    theta_dist: float  # ||theta_PT - theta_0||_2
    theta0_norm: float


class StopTimes(ResultModel):
    """Fine-tuning steps at which each rule stops: RWY with the oracle radius and given sigma, RWY with both
    estimated, hold-out early stopping, and the oracle (least test error)."""

    t_hat: int
    t_hat_est: int
    holdout: int
    oracle: int


class StopErrors(ResultModel):
    """Test MSE at one stopping time for the network and its linearisation, their gap and RMS(f - f_lin)."""

    net: float
    lin: float
    gap: float
    diff_rms: float


class DriftPoint(ResultModel):
    """||K_t - K_PT||_F at step t, divided by N (abs) and by ||K_PT||_F (rel)."""

    t: int
    abs: float
    rel: float


class Curves(ResultModel):
    """Per-step curves of fine-tuning: train MSE (before each step), validation MSE, test MSE of the network and of
    its linearisation against f_tgt, and RMS(f_t - f_lin,t) on the test inputs."""

    train: list[float]
    val: list[float]
    test: list[float]
    lin_test: list[float]
    lin_diff: list[float]


class FinetuneMeasures(ResultModel):
    """GD from theta_PT on the target task (`lab.finetune`): the stop rules, kernel drift, linearisation error and
    the test errors at each stopping time (docs/theory.md sec. 2-5)."""

    lambda_1: float  # top eigenvalue of K_PT / N
    step_ok: bool  # eta0 <= min(1, 1/lambda_1)
    radius_oracle: float
    rule: StopReport  # RWY with the oracle radius and the given sigma
    rule_estimated: StopReport  # RWY with radius and sigma estimated
    t_hat_capped: bool  # T_hat beyond the steps run
    times: StopTimes
    steps: int
    theta_dist_ft: float  # ||theta_T - theta_PT||_2
    drift: list[DriftPoint]
    drift_sup_abs: float
    drift_sup_rel: float
    lin_sup: float  # sup_t RMS(f_t - f_lin,t) on test
    taylor_rms: float  # RMS Taylor remainder at theta_T
    pt_test_mse: float
    curves: Curves
    err_t_hat: StopErrors
    err_t_hat_est: StopErrors
    err_holdout: StopErrors
    err_oracle: StopErrors


class PretrainUnit(PretrainMeasures, UnitRecord):
    """units/pretrain.json of the sample sweep (its weights are pretrain.safetensors)."""


class WidthUnit(FinetuneMeasures, PretrainMeasures, UnitRecord):  # fields in JSON order: the last base's first
    """One (width, seed) of the width sweep: pretrain and fine-tune measures, and the kernel's move in pretraining."""

    kernel_init_to_pt_rel: float  # ||K_0 - K_PT||_F / ||K_PT||_F on the target train inputs (eq 40)
    width: int
    seed: int


class SampleUnit(FinetuneMeasures, UnitRecord):
    """One (size, draw) of the sample sweep: fine-tune measures on `size` target samples and the eNTK's decay."""

    size: int
    draw: int
    beta_window: DecayFit
    beta_paper: DecayFit


class ArithTaskMeasures(ResultModel):
    """One task of a design: test MSE at theta_PT, fine-tuned, added (and its linearisation), negated, and the
    negation's MSE increase against its linearised value 4 mean(u (f_tgt - f_PT))."""

    mse_pt: float
    mse_ft: float
    mse_mt: float
    mse_mt_lin: float
    mse_neg: float
    normalised_mse: float  # mse_mt / mse_ft
    neg_gap: float
    neg_gap_lin: float
    neg_rel_dev: float | None  # None when the linearised gap is 0 (a zero task vector)


class ArithDesignMeasures(ResultModel):
    """Task addition and negation for one design (orthogonal or overlapping). The leakage by eigendirection band of
    K_jj is one extra field per band, leakage_dir<r> (r = 1, 2, 4, ...); bands beyond N_2 are absent."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float]

    cross_kernel_ratio: float
    tau_cosine: float
    tasks: dict[str, ArithTaskMeasures]
    disentanglement: float  # xi
    leakage: float | None  # None when a task vector is zero
    mt_lin_rms: float
    normalised_mse_mean: float

    @model_validator(mode="after")
    def _only_bands(self) -> ArithDesignMeasures:
        for name in self.__pydantic_extra__ or {}:
            if not name.removeprefix("leakage_dir").isdigit():
                raise ValueError(f"unknown field '{name}'")
        return self

    def band(self, name: str) -> float | None:
        """The leakage band `name` ('leakage_dir8'); None when absent (the band lies beyond N_2)."""
        return (self.__pydantic_extra__ or {}).get(name)


class ArithmeticUnit(UnitRecord):
    """One (width, seed) of the task-arithmetic lab: hold-out stop per task, and addition and negation per design."""

    width: int
    seed: int
    theta_dist: float
    stops: dict[str, int]
    designs: dict[str, ArithDesignMeasures]
