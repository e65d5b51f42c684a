"""The empirical NTK: one function, methods behind one protocol and a registry, plan / execute / assemble."""

from .api import kernel_matrix, normalise, trace_outputs, width_normalise
from .checkpoint import Accumulator, Checkpoint, MemoryStore
from .contract import HEAD_PREFIX, KernelModel
from .engine import assemble, execute, open_stores, plan_units
from .executor import DistributedExecutor, Executor, LocalExecutor, choose_executor
from .io import KernelFile, load_kernel_file
from .options import KernelOptions
from .params import ParamGroup, num_params, select_params
from .plan import Inputs, Options, Plan, Unit
from .registry import KernelMethod, Method, resolve_method

__all__ = ["HEAD_PREFIX", "Accumulator", "Checkpoint", "DistributedExecutor", "Executor", "Inputs", "KernelFile",
           "KernelMethod", "KernelModel", "KernelOptions", "LocalExecutor", "choose_executor",
           "MemoryStore", "Method", "Options", "ParamGroup", "Plan", "Unit", "assemble", "execute",
           "kernel_matrix", "load_kernel_file", "normalise", "num_params", "open_stores", "plan_units",
           "resolve_method", "select_params", "trace_outputs", "width_normalise"]
