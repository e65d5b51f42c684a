"""Fine-tuning throughput: ntkft's loop against Hugging Face's Trainer on the same model (minilm-l6,
full fine-tuning, scalar readout, MSE), data (STS-B train), batch size, precision (fp32, CPU) and
number of optimiser steps, each in its own process. Two Trainer rows: its default random batches, and
`train_sampling_strategy="group_by_length"` (batches drawn from rows of similar length: less padding, but other
batches than a random draw; ntkft keeps the random batch and cuts it in two by length instead).
Writes bench/results/finetune.json."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS, BATCH, N, MAXLEN = int(os.environ.get("BENCH_STEPS", "40")), 16, 320, 64

NTKFT = f"""
import json, time, torch
from ntkft.finetune import FinetuneConfig, Trainer
cfg = FinetuneConfig.make(model="minilm-l6", task="stsb", setting="full", n_train={N}, val=16, n_test=16,
                          max_length={MAXLEN}, batch_size={BATCH}, max_steps={STEPS}, eval_every={STEPS}, lr=2e-5)
t = Trainer(cfg, progress=False).setup()
t0 = time.time()
for _ in range({STEPS}):
    t._train_step()
dt = time.time() - t0
print(json.dumps({{"seconds": dt, "samples_per_second": {STEPS} * {BATCH} / dt}}))
"""

HF = f"""
import json, time, torch
from transformers import Trainer, TrainingArguments, DataCollatorWithPadding
from ntkft.models import Readout, load_model
from ntkft.tasks import load_task, subsample, holdout
m = load_model("minilm-l6")
data, _ = holdout(subsample(load_task("stsb", "train"), {N}, seed=0), 16, seed=0)
enc = m.tokenizer(data.text_a, data.text_b, truncation=True, max_length={MAXLEN})
rows = [{{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
          "labels": float(data.labels[i])}} for i in range(len(data))]
class Wrap(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.r = Readout.from_loaded(m)
    def forward(self, input_ids, attention_mask, labels=None):
        f = self.r(input_ids, attention_mask)
        return {{"loss": torch.mean((f - labels) ** 2), "logits": f}}
args = TrainingArguments(output_dir="/tmp/ntkft-hf-bench", per_device_train_batch_size={BATCH}, max_steps={STEPS},
                         learning_rate=2e-5, logging_steps=10**6, save_strategy="no", eval_strategy="no",
                         report_to=[], dataloader_num_workers=0, use_cpu=True, seed=0, disable_tqdm=True,
                         lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                         train_sampling_strategy="{{STRATEGY}}")
tr = Trainer(model=Wrap(), args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(m.tokenizer))
t0 = time.time()
tr.train()
dt = time.time() - t0
print(json.dumps({{"seconds": dt, "samples_per_second": {STEPS} * {BATCH} / dt}}))
"""


def run(code: str) -> dict:
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    repeats = int(os.environ.get("BENCH_REPEATS", "2"))
    runs: dict[str, list] = {"ntkft": [], "hf_trainer": [], "hf_trainer_grouped": []}
    for _ in range(repeats):  # alternate, keep each side's best run: less noise from the shared machine
        runs["ntkft"].append(run(NTKFT))
        runs["hf_trainer"].append(run(HF.replace("{STRATEGY}", "random")))
        runs["hf_trainer_grouped"].append(run(HF.replace("{STRATEGY}", "group_by_length")))
    rows = {k: max((r for r in v if "samples_per_second" in r), key=lambda r: r["samples_per_second"], default=v[0])
            for k, v in runs.items()}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    import torch
    import transformers

    out = {"benchmark": f"full fine-tuning minilm-l6, STS-B, batch {BATCH}, max_length {MAXLEN}, {STEPS} steps, fp32 CPU",
           "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
           "commit": commit, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows, "all_runs": runs}
    if "samples_per_second" in rows["ntkft"] and "samples_per_second" in rows["hf_trainer"]:
        out["ratio_ntkft_over_trainer"] = rows["ntkft"]["samples_per_second"] / rows["hf_trainer"]["samples_per_second"]
    if "samples_per_second" in rows["ntkft"] and "samples_per_second" in rows["hf_trainer_grouped"]:
        out["ratio_ntkft_over_trainer_grouped"] = (rows["ntkft"]["samples_per_second"]
                                                   / rows["hf_trainer_grouped"]["samples_per_second"])
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "finetune.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
