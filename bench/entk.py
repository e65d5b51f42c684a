"""eNTK benchmark: ntkft's factored method against the loops a competent PyTorch user writes instead.

Every configuration runs in its own process (wall time and peak RSS are its own; model loading and
encoding are excluded from the time), repeats alternate between methods (peer, ours, peer, ours...) so
that load from other users hits both alike, and the best of the repeats is reported with the spread.
Kernels are compared with factored's: traces and K must agree to 1e-4 (relative) or the row is marked
wrong. Peers:

  peer     per-sample torch.autograd.grad at each sample's own unpadded length, written into one float32
           J (N x P), then J @ J.T; where J does not fit in memory its time is extrapolated from the
           measured per-sample cost and GEMM rate (labelled "extrapolated")
  vmap     torch.func.vmap(grad) over the padded batch (where transformers' mask code lets it trace)
  nngeometry  GramMatrix of nngeometry 0.4 (pip install --no-deps nngeometry), where it handles the layers
  jacobian ntkft's torch.func reference (slow; a correctness oracle rather than a peer)

and `factored-mkl`: factored with NTKFT_GEMM=torch, i.e. on the same GEMM library as the peers (torch's MKL
matmul), so that the table separates the method's gain from the GEMM library's (see src/ntkft/kernel/gemm.py).
The floor is computed at the faster of the two libraries' float32 GEMM rates.

Usage (one command; the defaults are the README table):
  .venv/bin/python bench/entk.py                        # minilm-l6 and smollm2-135m at N = 16, 100
  .venv/bin/python bench/entk.py --quick                # minilm-l6 at N = 16, one repeat (a smoke test)
  .venv/bin/python bench/entk.py --models smollm2-135m --sizes 100 --methods factored --repeats 3
  .venv/bin/python bench/entk.py --large                # factored at N = 1000 (smollm2, 8 GB / 20 GB budget)
  .venv/bin/python bench/entk.py --sketch               # sketch error and beta vs exact at N = 100, k = 1k/4k/16k
  .venv/bin/python bench/entk.py --sketch-large         # sketch time at N = 10,000 (minilm-l6, SST-2, k = 4k)
Writes bench/results/entk.json (or --out) and prints the README table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ["peer", "vmap", "nngeometry", "jacobian"]


# ------------------------------------------------------------------ child: one configuration, one process


def _inputs(model: str, n: int, max_length: int, task: str):
    from ntkft.pipeline import build_readout
    from ntkft.tasks import encode, load_task, subsample

    loaded, r = build_readout(model)
    x = encode(loaded.tokenizer, loaded.kind, subsample(load_task(task, "train"), n, seed=0), max_length=max_length)
    return loaded, r, x


def _peer(r, x, budget: int) -> tuple:
    """Per-sample autograd at each sample's own length into one float32 J, then J J^T (on the model's device)."""
    import torch

    params = [p for p in r.parameters() if p.requires_grad]
    dev = params[0].device
    n, p_count = x["input_ids"].shape[0], sum(p.numel() for p in params)

    def grad_row(i: int, out: torch.Tensor) -> None:
        m = x["attention_mask"][i].bool()
        f = r(x["input_ids"][i][m][None], x["attention_mask"][i][m][None])
        off = 0
        for g, p in zip(torch.autograd.grad(f.sum(), params, allow_unused=True), params):
            if g is None:  # a parameter f does not use (BERT's pooler): its gradient is zero
                out[off:off + p.numel()] = 0
            else:
                out[off:off + g.numel()] = g.reshape(-1)
            off += p.numel()

    if n * p_count * 4 <= budget:
        j = torch.empty(n, p_count, device=dev)
        for i in range(n):
            grad_row(i, j[i])
        return (j @ j.T).double().cpu(), None, j  # J for the untimed float64 product (the float32 one's precision)
    # J does not fit: measure the per-sample cost on 8 samples and the GEMM rate, extrapolate N samples + J J^T
    probe = min(8, n)
    row = torch.empty(p_count, device=dev)
    t = time.time()
    for i in range(probe):
        grad_row(i, row)
    _sync(dev)
    per = (time.time() - t) / probe
    a = torch.randn(64, 1 << 22, device=dev)
    (a @ a.T).sum().item()
    t = time.time()
    (a @ a.T).sum().item()
    rate = 2 * 64 * 64 * (1 << 22) / (time.time() - t)
    est = per * n + 2 * n * n * p_count / rate
    return None, {"extrapolated_seconds": est, "per_sample_seconds": per, "gemm_flops": rate,
                  "j_bytes": n * p_count * 4}, None


def float64_product(j, block: int = 1 << 22):
    """J J^T with every column block converted to float64 first: the reference for the peer's float32 product,
    whose accumulation over P columns (up to 1.3e9) loses digits where BLAS sums long runs in float32."""
    import torch

    k = torch.zeros(j.shape[0], j.shape[0], dtype=torch.float64, device=j.device)
    for s in range(0, j.shape[1], block):
        b = j[:, s:s + block].double()
        k += b @ b.T
    return k.cpu()


def _vmap(r, x, budget: int, chunk: int = 8):
    """torch.func.vmap(grad) over the padded batch, `chunk` samples at a time written into one float32 J."""
    import torch
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in r.named_parameters()}
    dev = next(iter(params.values())).device
    p_count = sum(v.numel() for v in params.values())
    need = (x["input_ids"].shape[0] + chunk) * p_count * 4  # J and one chunk's per-sample gradients
    if need > budget:
        raise MemoryError(f"J and a chunk of per-sample gradients need {need / 2**30:.0f} GiB")

    def f(p, ids, mask):
        return functional_call(r, p, (ids[None], mask[None])).sum()

    per_sample = vmap(grad(f), in_dims=(None, 0, 0))
    n = x["input_ids"].shape[0]
    j = torch.empty(n, p_count, device=dev)
    for s in range(0, n, chunk):
        g = per_sample(params, x["input_ids"][s:s + chunk], x["attention_mask"][s:s + chunk])
        off = 0
        for v in g.values():
            w = v[0].numel()
            j[s:s + v.shape[0], off:off + w] = v.reshape(v.shape[0], -1)
            off += w
        del g
    return (j @ j.T).double().cpu()


def _nngeometry(r, x):
    import torch
    from nngeometry import GramMatrix
    from nngeometry.layercollection import LayerCollection

    lc = LayerCollection.from_model(r)  # raises on layer types nngeometry does not know
    data = torch.utils.data.TensorDataset(x["input_ids"], x["attention_mask"])
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    g = GramMatrix(r, loader, function=lambda ids, mask: r(ids, mask)[:, None], layer_collection=lc)
    n = x["input_ids"].shape[0]
    return g.get_dense_tensor().reshape(n, n).double()


def _sync(dev) -> None:
    import torch

    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize(dev)


def _compute(method: str, r, x, extra: dict, dev) -> tuple:
    """K (float64, on the host) by `method`, any extra facts (an extrapolation) for the row, and the peer's float32 J
    where it holds one (else None)."""
    import torch

    from ntkft.kernel import kernel_matrix
    from ntkft.kernel.plan import available_memory

    on = {} if dev.type == "cpu" else {"device": dev, "accumulate": "device"}
    if method == "factored-mkl":
        method = "factored"  # the child set NTKFT_GEMM=torch
    if method in ("factored", "sketch", "jacobian"):
        return kernel_matrix(r, x, method=method, progress=False, **on, **extra), {}, None
    room = available_memory() if dev.type == "cpu" else torch.cuda.mem_get_info(dev)[0]
    if method == "peer":
        k, est, j = _peer(r, x, int(0.6 * room))
        return k, est or {}, j
    if method == "vmap":
        return _vmap(r, x, int(0.6 * room)), {}, None
    if method == "nngeometry":
        return _nngeometry(r, x), {}, None
    raise SystemExit(f"unknown method {method}")


def child(method: str, model: str, n: int, max_length: int, task: str, out: str, extra: dict, threads: int,
          device: str = "cpu") -> None:
    import torch

    from ntkft._io import peak_rss_mb
    from ntkft.kernel import gemm

    if threads:
        torch.set_num_threads(threads)
    if method == "factored-mkl":
        os.environ["NTKFT_GEMM"] = "torch"
    dev = torch.device(device)
    loaded, r, x = _inputs(model, n, max_length, task)
    if dev.type == "cuda":  # model and inputs on the GPU; one untimed pass on 2 samples loads the kernels
        r.to(dev)
        x = {k: v.to(dev) for k, v in x.items()}
        _compute(method, r, {k: v[:2] for k, v in x.items()}, extra, dev)
        _sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    t, c = time.time(), time.process_time()
    k, info, j = _compute(method, r, x, extra, dev)
    _sync(dev)
    seconds, cpu = time.time() - t, time.process_time() - c
    extra_k = {}
    if j is not None:  # untimed: how far the float32 product is from float64's
        k64 = float64_product(j)
        del j
        extra_k["K64"] = k64
        info["float32_product_rel_error"] = float((k - k64).norm() / k64.norm())
    row = {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak_rss_mb(),
           "tokens": int(x["attention_mask"].sum()), "threads": torch.get_num_threads(), "device": str(dev),
           "gemm": gemm.backend() if dev.type == "cpu" else "torch",
           "params": sum(q.numel() for q in r.parameters()),
           "params_linear": sum(m.weight.numel() for m in r.modules() if isinstance(m, torch.nn.Linear)), **info}
    if dev.type == "cuda":
        row["gpu_peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        row["gpu"] = torch.cuda.get_device_name(dev)
    if k is not None:
        from safetensors.torch import save_file

        save_file({"K": k.contiguous(), **extra_k}, out)
        row["trace"] = float(k.trace())
    else:
        row["seconds"] = info["extrapolated_seconds"]
        row["note"] = "extrapolated: J does not fit in memory"
    print("RESULT " + json.dumps(row))


# ------------------------------------------------------------------ parent


def run(method: str, model: str, n: int, args, tmp: Path, extra: dict | None = None) -> dict:
    safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in model)  # a path or hub id as a file name
    out = tmp / f"{method}-{safe}-{n}-{time.time_ns()}.safetensors"
    cmd = [sys.executable, __file__, "--child", method, model, str(n), str(out), json.dumps(extra or {}),
           "--max-length", str(args.max_length), "--task", args.task, "--threads", str(args.threads),
           "--device", args.device]
    load = os.getloadavg()[0]
    t = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        return {"method": method, "model": model, "n": n, "error": f"did not finish within {args.timeout}s",
                "load_before": load}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        errs = [ln for ln in p.stderr.splitlines() if "Error" in ln or "Exception" in ln]
        tail = errs[-1] if errs else f"exit code {p.returncode}" + (" (killed: out of memory?)" if p.returncode < 0 else "")
        return {"method": method, "model": model, "n": n, "error": tail[:300], "wall_s": time.time() - t,
                "load_before": load}
    row = {"method": method, "model": model, "n": n, **json.loads(lines[-1][7:]), "load_before": load,
           "load_after": os.getloadavg()[0]}
    if out.exists():
        row["k_file"] = str(out)
    return row


def _compare(rows: list[dict]) -> None:
    """Mark rows whose K disagrees with factored's (same model and N) by more than 1e-4."""
    import torch
    from safetensors.torch import load_file

    ref = {}
    for r in rows:
        if r["method"] == "factored" and "k_file" in r:
            ref[(r["model"], r["n"])] = load_file(r["k_file"])["K"]
    for r in rows:
        k0 = ref.get((r["model"], r["n"]))
        if "k_file" not in r or k0 is None or r["method"] in ("factored", "sketch"):
            continue
        ks = load_file(r["k_file"])
        k = ks["K"]
        if "K64" in ks:  # the peer's own J with a float64 product: does factored match the exact J J^T?
            r["rel_frobenius_float64_product_vs_factored"] = float((ks["K64"] - k0).norm() / k0.norm())
        rel = float((k - k0).norm() / k0.norm())
        tr = abs(float(k.trace() - k0.trace())) / float(k0.trace())
        r["rel_frobenius_vs_factored"], r["rel_trace_vs_factored"] = rel, tr
        if rel > 1e-4 or tr > 1e-4 or not torch.isfinite(k).all():
            r["wrong"] = True


def _best(rows: list[dict]) -> list[dict]:
    """Best of the repeats per (method, model, n), with the spread of the repeats that ran (those whose K is
    wrong only where no repeat's K is right: the row stays marked)."""
    out: dict[tuple, dict] = {}
    for r in rows:
        key = (r["method"], r["model"], r["n"])
        ran = [x for x in rows if (x["method"], x["model"], x["n"]) == key and "seconds" in x]
        ok = [x for x in ran if not x.get("wrong")] or ran  # a wrong K is still timed, and marked
        if ok:
            best = dict(min(ok, key=lambda x: x["seconds"]))
            best["repeats"] = [round(x["seconds"], 2) for x in ok]
            best["spread"] = max(x["seconds"] for x in ok) / min(x["seconds"] for x in ok)
            out[key] = best
        elif key not in out:
            out[key] = r
    return list(out.values())


def floor_seconds(row: dict, gemm_flops: float) -> float:
    """A lower bound for factored: forward + input-gradient backward (4 P_lin per token), per-sample weight
    gradients (2 P_lin per token) and the upper-triangle Gram (N(N+1) P), at the measured float32 GEMM rate."""
    n = row["n"]
    return (6 * row["params_linear"] * row["tokens"] + n * (n + 1) * row["params"]) / gemm_flops


def gemm_rate(device: str = "cpu", library: str = "torch") -> float:
    """float32 GEMM rate (flop/s) in a fresh process: 2048^3 on the CPU, 8192^3 on a GPU (TF32 off, torch's default);
    `library` "onednn": the CPU product through oneDNN as ntkft's kernel calls it (src/ntkft/kernel/gemm.py)."""
    size = 2048 if device == "cpu" else 8192
    prod = "torch.ops.mkldnn._linear_pointwise(a,b,None,'none',[],'')" if library == "onednn" else "a@b"
    code = (f"import time,torch\nd=torch.device({device!r});a=torch.randn({size},{size},device=d);"
            f"b=torch.randn({size},{size},device=d);({prod}).sum().item()\nt=time.time()\n"
            f"for _ in range(10): c={prod}\nc.sum().item()\nprint(2*{size}**3*10/(time.time()-t))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    return float(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--models", default="minilm-l6,smollm2-135m")
    ap.add_argument("--sizes", default="16,100")
    ap.add_argument("--methods", default="factored,factored-mkl,peer,vmap,nngeometry")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--task", default="rte")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = torch's default, all cores)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where the model, inputs and J live (on cuda each "
                    "run first computes an untimed 2-sample kernel, and K is summed on the GPU)")
    ap.add_argument("--quick", action="store_true", help="minilm-l6, N = 16, factored and peer, one repeat")
    ap.add_argument("--large", action="store_true", help="factored at N = 1000 on smollm2 (8 GB RAM, 20 GB disk)")
    ap.add_argument("--sketch", action="store_true", help="sketch error and beta vs exact, N = 100, k = 1k, 4k, 16k")
    ap.add_argument("--sketch-large", action="store_true", help="sketch time and memory at N = 10,000 "
                    "(minilm-l6, SST-2 train, k = 4096, one run)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "entk.json"))
    args = ap.parse_args()
    if args.child:
        method, model, n, out, extra = args.child
        child(method, model, int(n), args.max_length, args.task, out, json.loads(extra), args.threads, args.device)
        return
    if args.quick:
        args.models, args.sizes, args.methods, args.repeats = "minilm-l6", "16", "factored,peer", 1
    if args.sketch_large:
        args.task, args.repeats = "sst2", 1
        if args.out == ap.get_default("out"):
            args.out = str(ROOT / "bench" / "results" / "entk-sketch-large.json")
    tmp = Path(tempfile.mkdtemp(prefix="ntkft-bench-"))
    rows: list[dict] = []
    configs = [(m, model, int(n), None) for model in args.models.split(",") for n in args.sizes.split(",")
               for m in args.methods.split(",")]
    if args.large:
        configs = [("factored", "smollm2-135m", 1000, {"max_memory": 8 * 2**30 - 2**29, "max_disk": 20 * 2**30})]
    if args.sketch:
        configs = [("factored", model, 100, None) for model in args.models.split(",")]
        configs += [("sketch", model, 100, {"sketch_dim": k}) for model in args.models.split(",")
                    for k in (1024, 4096, 16384)]
    if args.sketch_large:
        configs = [("sketch", "minilm-l6", 10000, {"sketch_dim": 4096})]
    for rep in range(args.repeats):
        for method, model, n, extra in (configs if rep % 2 == 0 else configs[::-1]):  # alternate the order
            failed = [r for r in rows if (r["method"], r["model"]) == (method, model) and "error" in r
                      and method in PEERS and "did not finish" not in r["error"]]
            if failed:  # a peer that cannot handle this model (vmap, nngeometry) fails the same way at every N
                continue
            row = run(method, model, n, args, tmp, extra)
            if extra:
                row["options"] = extra
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "k_file"}), flush=True)
    _compare(rows)
    best = _best(rows) if not (args.sketch or args.sketch_large) else rows
    rates = {"torch": gemm_rate(args.device)}
    if args.device == "cpu":
        rates["onednn"] = gemm_rate(args.device, "onednn")
    rate = max(rates.values())  # the floor at the faster library
    import torch
    import transformers

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {"benchmark": f"eNTK, all parameters, {args.task} train, max_length {args.max_length}, scalar readout",
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "device": args.device, "gemm_gflops": rate / 1e9,
                          "gemm_gflops_by_library": {k: v / 1e9 for k, v in rates.items()}},
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "python": platform.python_version()},
              "commit": commit, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": best, "all_runs": rows}
    if args.sketch:
        result["sketch"] = _sketch_report(rows)
    if args.sketch_large:  # beta of the N = 10,000 sketch by the paper's estimator (one 10k x 10k eigendecomposition)
        from safetensors.torch import load_file

        for r in rows:
            if "k_file" in r:
                t = time.time()
                r["beta_paper"] = _beta(load_file(r["k_file"])["K"])
                r["eig_seconds"] = time.time() - t
    print("\n| model | N | method | seconds (best of repeats) | peak RSS (MiB) | spread | ratio vs factored | note |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(best, key=lambda r: (r["model"], r["n"], r["method"] != "factored", r["method"])):
        ours = next((x for x in best if x["method"] == "factored" and x["model"] == r["model"] and x["n"] == r["n"]
                     and "seconds" in x), None)
        ratio = f"{r['seconds'] / ours['seconds']:.1f}x" if ours and "seconds" in r and r is not ours else ""
        note = "WRONG K" if r.get("wrong") else r.get("note", r.get("error", ""))
        print(f"| {r['model']} | {r['n']} | {r['method']} | {r.get('seconds', float('nan')):.1f} | "
              f"{r.get('peak_rss_mb', float('nan')):.0f} | {r.get('spread', float('nan')):.2f} | {ratio} | {note} |")
    for r in best:
        if r["method"] == "factored" and "seconds" in r:
            fl = floor_seconds(r, rate)
            peers = [x["seconds"] for x in best if x["model"] == r["model"] and x["n"] == r["n"]
                     and x["method"] in PEERS and "seconds" in x and not x.get("wrong")]
            r["floor_seconds"] = fl
            if peers:
                r["ratio_vs_best_peer"] = min(peers) / r["seconds"]
            print(f"{r['model']} N={r['n']}: factored {r['seconds']:.1f}s, floor {fl:.1f}s "
                  f"({r['seconds'] / fl:.1f}x the floor)" + (f", best peer {min(peers):.1f}s -> "
                                                              f"{min(peers) / r['seconds']:.1f}x" if peers else ""))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)  # the kernels each run wrote (a sketch at N = 10,000 is 800 MB)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    for r in rows:
        r.pop("k_file", None)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}")


def _sketch_report(rows: list[dict]) -> list[dict]:
    """Relative Frobenius error and beta (paper estimator, eq 31-32) of each sketch against the exact kernel."""
    from safetensors.torch import load_file

    out = []
    exact = {r["model"]: load_file(r["k_file"])["K"] for r in rows if r["method"] == "factored" and "k_file" in r}
    for r in rows:
        if r["method"] != "sketch" or "k_file" not in r or r["model"] not in exact:
            continue
        k, k0 = load_file(r["k_file"])["K"], exact[r["model"]]
        out.append({"model": r["model"], "k": r["options"]["sketch_dim"], "seconds": r["seconds"],
                    "rel_frobenius": float((k - k0).norm() / k0.norm()), "beta": _beta(k), "beta_exact": _beta(k0)})
    return out


def _beta(k) -> float:
    from ntkft.spectrum import eigenvalues, paper_beta

    return float(paper_beta(eigenvalues(k.numpy())).beta)


if __name__ == "__main__":
    main()
