"""The theory lab: the paper's reference transformer, closed-form attention Jacobians, its eNTK, and sweeps that
measure the width and sample-size laws and task arithmetic on synthetic teacher tasks (docs/theory.md sec. 2-7)."""

from .config import ArithmeticConfig, LabConfig, SampleSweepConfig, WidthSweepConfig
from .fits import SlopeFit, loglog_slope
from .model import ReferenceTransformer, RefSpec
from .ntk import entk, kernel_scale, naive_entk
from .sweeps import arithmetic_sweep, sample_sweep, width_sweep

__all__ = ["ArithmeticConfig", "LabConfig", "RefSpec", "ReferenceTransformer", "SampleSweepConfig", "SlopeFit",
           "WidthSweepConfig", "arithmetic_sweep", "entk", "kernel_scale", "loglog_slope", "naive_entk", "sample_sweep",
           "width_sweep"]
