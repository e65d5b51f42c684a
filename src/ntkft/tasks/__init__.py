"""Tasks: registry, file readers with validation, user task specs, encoding, sampling, metrics."""

from .data import TaskData, data_dir, load_task
from .encode import PAIR_TEMPLATE, encode
from .metrics import task_metrics
from .sampling import holdout, subsample
from .spec import BUILTIN, TaskSpec, get_spec, load_spec_file, resolve_task, table_spec, user_task

__all__ = ["BUILTIN", "PAIR_TEMPLATE", "TaskData", "TaskSpec", "data_dir", "encode", "get_spec", "holdout",
           "load_spec_file", "load_task", "resolve_task", "subsample", "table_spec", "task_metrics", "user_task"]
