"""Issue 27's powered experiment: does the eNTK predict fine-tuning sample efficiency?"""

from .config import Control, EfficiencyConfig
from .run import InjectedFault, run

__all__ = ["Control", "EfficiencyConfig", "InjectedFault", "run"]
