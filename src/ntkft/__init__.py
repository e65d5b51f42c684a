"""ntkft: fine-tuning as early-stopped kernel regression around a pretrained model.

The public API, re-exported from the subpackages."""

from .errors import ConfigError, DataError, KernelError, ModelError, NtkftError
from .kernel import Method, ParamGroup, kernel_matrix, load_kernel_file
from .models import Readout, load_model
from .pipeline import build_readout, compute_kernel_file, recompute
from .select import SelectResult, select
from .spectrum import eigenvalues, estimate_beta, fit_beta, paper_beta, subsample_ci
from .stopping import KernelGD, KernelRidge, stop_report
from .tasks import encode, load_task, subsample

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "KernelError", "KernelGD", "KernelRidge", "Method", "ModelError", "NtkftError",
           "ParamGroup", "Readout", "SelectResult", "build_readout", "compute_kernel_file", "eigenvalues", "encode",
           "estimate_beta", "fit_beta", "kernel_matrix", "load_kernel_file", "load_model", "load_task", "paper_beta",
           "recompute", "select", "stop_report",
           "subsample", "subsample_ci"]
