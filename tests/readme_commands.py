"""The one rewrite table that turns README.md's commands into tiny runs (used by tests/test_readme.py).

Every command in a README code block must match exactly one row here, or the test fails: a new README line
needs a row, and a row whose README line is gone fails too (`unused`). How a row is checked:
- "run": the command runs in-process at tiny scale: model aliases swapped for random tiny models, and the
  row's flags set to small values (a flag the line lacks is added);
- "parse": the line is parsed by the real CLI parser (every flag must exist and take its value) but not run:
  hub datasets, torchrun launches, the full reproduction and the like;
- "make": a Makefile target that must exist (`make demo` itself is timed by hand, see configs/quick.yaml).
Inline `ntkft ...` spans in the prose are parsed unless a row says otherwise; a span with a placeholder
(`FILE...`, `a | b`) is matched by an "elided" row and only its command name is checked."""

from __future__ import annotations

# real model aliases -> tiny random models of the same kind (decoder / encoder)
MODELS = {"smollm2-135m": "tiny-llama", "minilm-l6": "tiny-bert"}

# (regex on the README command, how, {flag: tiny value})
TABLE: list[tuple[str, str, dict[str, str]]] = [
    (r"^make (demo|test)$", "make", {}),
    (r"^ntkft models$", "run", {}),
    (r"^ntkft tasks$", "run", {}),
    (r"^ntkft kernel --model \S+ --task rte ", "run", {"--n": "12", "--max-length": "24"}),
    (r"^ntkft spectrum runs/rte-k/$", "run", {"--ci-draws": "20"}),
    (r"^ntkft spectrum --model ", "run", {"--n": "12", "--draws": "2", "--max-length": "24", "--ci-draws": "20"}),
    (r"^ntkft stop runs/rte-k/", "run", {}),
    (r"^ntkft finetune --model \S+ --task stsb ", "run",
     {"--n-train": "16", "--n-test": "16", "--max-steps": "4", "--eval-every": "2", "--drift-every": "2",
      "--drift-n": "4", "--max-length": "24", "--batch-size": "8"}),
    (r"^ntkft curve ", "run", {"--layers": "1", "--sizes": "8,12", "--seeds": "1", "--tasks": "stsb", "--max-steps": "3",
                               "--n-test": "12", "--eval-every": "1", "--max-length": "24", "--batch-size": "4"}),
    (r"^ntkft finetune --task data\.csv ", "run",
     {"--model": "tiny-bert", "--n-train": "12", "--n-test": "8", "--max-steps": "2", "--max-length": "16"}),
    (r"^ntkft finetune --task glue/", "parse", {}),
    (r"^ntkft finetune --task \S+/\S+ --text-columns", "parse", {}),
    (r"^torchrun .* -m ntkft\.cli ", "parse", {}),
    (r"^ntkft reproduce ", "parse", {}),
    (r"^ntkft select ", "parse", {}),
    (r"^ntkft efficiency ", "parse", {}),
    (r"^ntkft report ", "parse", {}),
    (r"^ntkft (spectrum|stop) FILE", "elided", {}),
    (r"^ntkft (theory|taskvec) \S+ \|", "elided", {}),
]

# files the "run" rows need in their working folder (the README's `data.csv` example)
DATA_CSV = "text,y\n" + "".join(f"sentence number {i} is here,{i % 5}.{i % 3}\n" for i in range(40))

# README python blocks: plain text replacements that make them tiny (applied in order)
PYTHON = [('"minilm-l6"', '"tiny-bert"'), ('"smollm2-135m"', '"tiny-llama"'), ("), 64)", "), 12)"),
          ("max_length=64", "max_length=24")]
