"""Fine-tuning with hold-out early stopping in four settings, drift tracking and learning curves."""

from .config import FinetuneConfig
from .curve import learning_curve
from .early_stopping import EarlyStopping
from .loop import FinetuneResult, Trainer, TrainingError, finetune
from .models import Linearized, build, probe_closed_form

__all__ = ["EarlyStopping", "FinetuneConfig", "FinetuneResult", "Linearized", "Trainer", "TrainingError", "build",
           "finetune", "learning_curve", "probe_closed_form"]
