"""The empirical NTK: one function, methods selected by an enum, cross-checked in tests."""

from .api import Method, kernel_matrix, normalise, resolve_method, trace_outputs, width_normalise
from .io import KernelFile, load_kernel_file
from .params import ParamGroup, num_params, select_params

__all__ = ["KernelFile", "Method", "ParamGroup", "kernel_matrix", "load_kernel_file",
           "normalise", "num_params", "resolve_method", "select_params", "trace_outputs",
           "width_normalise"]
