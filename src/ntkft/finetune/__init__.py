"""Fine-tuning with hold-out early stopping in four settings, drift tracking and learning curves."""

from ..errors import TrainingError
from .config import FinetuneConfig
from .curve import learning_curve
from .data import load_splits
from .early_stopping import EarlyStopping
from .loop import FinetuneResult, Trainer, finetune
from .models import Linearized, probe_closed_form
from .settings import DEFAULT_LR, SETTINGS, Setting, build, get_setting

__all__ = ["DEFAULT_LR", "SETTINGS", "EarlyStopping", "FinetuneConfig", "FinetuneResult", "Linearized", "Setting",
           "Trainer", "TrainingError", "build", "finetune", "get_setting", "learning_curve", "load_splits",
           "probe_closed_form"]
