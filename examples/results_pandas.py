"""Read ntkft's results into pandas: every number is in CSV/JSON files beside the figures.

Run: python examples/results_pandas.py  (reads the committed reproduction in docs/results/repro/; point
NTKFT_EXAMPLE_RUN at your own `ntkft reproduce` folder)."""

import json
import os
from pathlib import Path

import pandas as pd

RUN = Path(os.environ.get("NTKFT_EXAMPLE_RUN", Path(__file__).resolve().parents[1] / "docs" / "results" / "repro"))

beta = pd.read_csv(RUN / "spectra" / "beta.csv")  # one row per model and task
print(beta[["model", "task", "beta_ntkft_mean", "ci_low", "ci_high", "beta_paper_mean"]].to_string(index=False))

curves = pd.read_csv(RUN / "curves" / "curves.csv")  # one row per fine-tuning run (model, task, size, seed)
print(curves.groupby(["model", "task", "size"])["mse"].mean().dropna().unstack("size").round(3))

meta = json.loads((RUN / "meta.json").read_text())  # versions, commit, time, peak memory of the run
print("run status:", meta.get("status"), "| ntkft", meta.get("versions", {}).get("ntkft", "?"))
