"""Task vectors (Section 5.2): streamed tensor arithmetic on checkpoints, addition and negation with lambda chosen on
validation, cosine, weight disentanglement, kernel orthogonality (Assumption 5.1) and the linearised prediction."""

from .config import (
    DEFAULT_LAMBDAS,
    AddConfig,
    CosineConfig,
    DisentangleConfig,
    NegateConfig,
    OrthogonalityConfig,
)
from .merge import ShardWriter, add, load_into, negate, write_merged
from .run import (
    AddResult,
    CosineResult,
    DisentangleResult,
    NegateResult,
    OrthogonalityResult,
    TaskVecReport,
    experiment,
    run_add,
    run_cosine,
    run_disentangle,
    run_negate,
    run_orthogonality,
)
from .sources import Checkpoint, Head, Pretrained, WeightFiles, open_checkpoint, pretrained_dir
from .vector import TaskVector, cosine_matrix, gram, task_vectors

__all__ = ["DEFAULT_LAMBDAS", "AddConfig", "AddResult", "Checkpoint", "CosineConfig", "CosineResult",
           "DisentangleConfig", "DisentangleResult", "Head", "NegateConfig", "NegateResult", "OrthogonalityConfig",
           "OrthogonalityResult", "Pretrained", "ShardWriter", "TaskVecReport", "TaskVector", "WeightFiles", "add",
           "cosine_matrix", "experiment", "gram", "load_into", "negate", "open_checkpoint", "pretrained_dir",
           "run_add", "run_cosine", "run_disentangle", "run_negate", "run_orthogonality", "task_vectors",
           "write_merged"]
