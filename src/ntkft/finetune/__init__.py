"""Fine-tuning with hold-out early stopping in four settings, drift tracking and learning curves."""

from ..errors import TrainingError
from .callbacks import Callback, KernelDrift, MetricsLog, ProgressBar, RunFolderCallback, ScoreTest, TensorBoard
from .config import FinetuneConfig
from .curve import learning_curve
from .data import load_splits
from .early_stopping import EarlyStopping
from .loop import Trainer, finetune
from .models import Linearized, probe_closed_form
from .predictor import Predictor
from .result import FinetuneResult
from .settings import DEFAULT_LR, SETTINGS, Setting, build, get_setting

__all__ = ["DEFAULT_LR", "SETTINGS", "Callback", "EarlyStopping", "FinetuneConfig", "FinetuneResult", "KernelDrift",
           "Linearized", "MetricsLog", "Predictor", "ProgressBar", "RunFolderCallback", "ScoreTest", "Setting",
           "TensorBoard", "Trainer", "TrainingError", "build", "finetune", "get_setting", "learning_curve",
           "load_splits", "probe_closed_form"]
