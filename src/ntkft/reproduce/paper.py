"""The paper's reported numbers (Sun & Raskutti, Section 7 and Figures 2-3), for the side-by-side table."""

from __future__ import annotations

# Section 7.1: beta = mean +- sd over draws of 100 samples, GPT-Neo-1.3B, the paper's estimator (eq 31-32).
PAPER_BETA: dict[str, tuple[float, float]] = {
    "semrel": (0.60, 0.0366),
    "sts12": (0.58, 0.0126),
    "stsb": (0.54, 0.0229),
    "amazon_polarity": (0.62, 0.0076),
    "mrpc": (0.55, 0.0029),
    "rte": (0.51, 0.01),
}

# The task families the paper ranks within (Figure 2): regression by MSE, classification by accuracy.
FAMILIES: dict[str, list[str]] = {
    "regression": ["semrel", "sts12", "stsb"],
    "classification": ["amazon_polarity", "mrpc", "rte"],
}

# Figure 2 / Section 7.1: the observed learning-curve order, best (fewest samples needed) first.
PAPER_MEASURED_ORDER: dict[str, list[str]] = {
    "regression": ["semrel", "sts12", "stsb"],
    "classification": ["amazon_polarity", "mrpc", "rte"],
}

# Figure 3 (right): the paper shows normalised accuracy of f_MultiTask per task as a bar chart without
# printed values; Section 7.2 says only that it is "strong" on each task. None = not given as a number.
PAPER_NORMALISED_ACCURACY: dict[str, float | None] = {"cr": None, "sst2": None, "rte": None, "mrpc": None}
PAPER_TASKVEC_NOTE = ("Figure 3: the RTE task vector is nearly orthogonal to the others; task addition works well "
                      "even where task vectors are correlated (values shown only as a heatmap and bars).")

TASK_LABELS: dict[str, str] = {
    "semrel": "SemRel", "sts12": "STS-12", "stsb": "STS-B", "amazon_polarity": "Amazon", "mrpc": "MRPC",
    "rte": "RTE", "cr": "CR", "sst2": "SST-2",
}


def label(task: str) -> str:
    """Display name of a task (the paper's spelling)."""
    return TASK_LABELS.get(task, task)
