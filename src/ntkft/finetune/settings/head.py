"""Setting 2 of the paper: the backbone cut after --layers blocks plus a new head, all of it trained."""

from .base import Setting

SETTING = Setting("head", "backbone cut after --layers blocks + new head, all trained (Setting 2)",
                  trains="truncated backbone + head", optimizer="adamw", lr={"adamw": 5e-5, "gd": 1e-2}, max_steps=200,
                  options=frozenset({"layers"}))
