"""Setting 1 of the paper: every weight of the pretrained model and the new head trains."""

from .base import Setting

SETTING = Setting("full", "all weights trained (Setting 1)", trains="backbone + head", optimizer="adamw",
                  lr={"adamw": 2e-5, "gd": 1e-2}, max_steps=200)
