"""Early stopping theory: kernel GD paths, the RWY rule, KRR + CV, hold-out stopping."""

from .kgd import KernelGD, iterate_gd, step_schedule
from .krr import HoldoutResult, KernelRidge, RidgeCV, cv_ridge, holdout_stop
from .rwy import (
    FinetuneAction,
    StopReport,
    critical_radius,
    estimate_radius,
    estimate_sigma,
    eta_star,
    finetune_action,
    first_firing,
    phi,
    rademacher,
    rule_fires,
    steps_to_epochs,
    stop_report,
    stopping_time,
    t_op,
)

__all__ = ["FinetuneAction", "HoldoutResult", "KernelGD", "KernelRidge", "RidgeCV", "StopReport", "critical_radius",
           "cv_ridge", "estimate_radius", "estimate_sigma", "eta_star", "finetune_action", "first_firing", "holdout_stop",
           "iterate_gd", "phi", "rademacher", "rule_fires", "step_schedule", "steps_to_epochs", "stop_report",
           "stopping_time", "t_op"]
