"""The linear probe (Remark 5.1): a frozen backbone whose features are computed once; only the head trains.

Linear regression on cached features: full-batch GD with step 1/(2 lambda_max) of the features' second moment (the
RWY step bound; lr None) early-stops like ridge and, unlike AdamW's per-coordinate steps, does not chase validation
noise (checked on MiniLM / STS-B). Steps are cheap, so it takes more of them."""

from .base import Setting

SETTING = Setting("probe", "frozen backbone, head only (Remark 5.1); features computed once", trains="head",
                  optimizer="gd", lr={"adamw": 1e-2, "gd": None}, max_steps=1000, options=frozenset({"layers"}),
                  frozen_backbone=True)
