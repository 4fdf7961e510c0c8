"""GPU figures: MC-dropout head-mode scoring vs one plain forward pass, and faiss GPU vs CPU kNN.

1. images/s of the `mcdropout` estimator (BALD, head mode, T = 20 and 100) on a resnet50
   (random init, no download) at 224x224 under bf16 autocast, against one plain forward pass
   over the same pool in the same conditions (bf16 autocast, channels_last input, inference
   mode): head mode should cost about one forward pass whatever T is.
2. exact kNN (k = 10, inner product) over 100k x 2048 float32 features: faiss on the GPU vs
   faiss on the CPU, for a block of queries (all 100k queries on the CPU would take minutes).
   When faiss has no GPU support (faiss-cpu installed), the GPU side is flexsample's torch
   fallback (chunked matmul + top-k on the GPU) and the summary says so.

Writes summary.json and summary.md to --out. Sized to finish in well under 4 minutes on an
H100; `--small` runs a seconds-long version (also on a CPU, for checking the script).

    python benchmarks/gpu_scoring.py --out benchmarks/out/gpu
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from flexsample.engine.context import ScoringContext, autocast_for, tensor_inputs
from flexsample.engine.registry import get_estimator
from flexsample.engine.scoring import score_candidates
from flexsample.estimators.density import faiss_gpu_count, knn_search, l2_normalize
from flexsample.training.models import create_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of `repeats` runs after one warm-up."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def scoring(args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = create_model(args.backbone, 8, 3, dropout=0.5).to(device).eval()
    n, size = args.pool, args.image_size
    x = torch.randn(n, 3, size, size, device=device)
    labels = np.zeros(n, dtype=np.int64)
    cand = np.arange(n)

    def floor() -> None:
        with torch.inference_mode(), autocast_for(device):
            for s in range(0, n, args.batch):
                xb = x[s : s + args.batch]
                if device.type == "cuda":
                    xb = xb.contiguous(memory_format=torch.channels_last)
                model(xb)

    out = {"floor_s": timed(floor, device, args.repeats)}
    out["floor_images_per_s"] = n / out["floor_s"]
    for t in args.mc_samples:
        est = get_estimator("mcdropout", mc_samples=t, mc_score="bald", mc_mode="head")

        def run(est=est) -> None:
            ctx = ScoringContext(
                model, tensor_inputs(x), labels, seed=0, step=1, batch_size=args.batch
            )
            score_candidates(est, ctx, cand)

        s = timed(run, device, args.repeats)
        out[f"mcdropout_T{t}_s"] = s
        out[f"mcdropout_T{t}_images_per_s"] = n / s
        out[f"mcdropout_T{t}_over_floor"] = s / out["floor_s"]
    out.update(
        backbone=args.backbone,
        pool=n,
        image_size=size,
        batch=args.batch,
        autocast="bf16" if device.type == "cuda" else "none",
    )
    return out


def knn(args: argparse.Namespace, device: torch.device) -> dict:
    rng = np.random.default_rng(0)
    n, d, k, nq = args.knn_rows, args.knn_dim, 10, args.knn_queries
    centers = rng.standard_normal((64, d), dtype=np.float32)
    feats = centers[rng.integers(0, 64, n)] + rng.standard_normal((n, d), dtype=np.float32)
    db = l2_normalize(feats)
    queries = db[:nq]
    out: dict = {
        "rows": n,
        "dim": d,
        "k": k,
        "queries": nq,
        "faiss": faiss.__version__,
        "faiss_gpus": faiss_gpu_count(),
        "faiss_cpu_threads": faiss.omp_get_max_threads(),
    }
    out["cpu_s"] = timed(lambda: knn_search(db, queries, k + 1, device="cpu"), device, 1)
    if device.type != "cuda":
        out["gpu"] = "no CUDA device"
        return out
    out["gpu_backend"] = (
        "faiss-gpu"
        if faiss_gpu_count()
        else ("torch (faiss has no GPU support here: flexsample's fallback path)")
    )
    out["gpu_s"] = timed(
        lambda: knn_search(db, queries, k + 1, device=device), device, args.repeats
    )
    out["cpu_over_gpu"] = out["cpu_s"] / out["gpu_s"]
    _, ids_cpu = knn_search(db, queries, k + 1, device="cpu")
    _, ids_gpu = knn_search(db, queries, k + 1, device=device)
    same = [set(a) == set(b) for a, b in zip(ids_cpu.tolist(), ids_gpu.tolist(), strict=True)]
    out["same_neighbour_sets"] = float(np.mean(same))
    if args.knn_all_queries_gpu:
        out["gpu_all_queries_s"] = timed(
            lambda: knn_search(db, db, k + 1, device=device), device, 1
        )
    return out


def markdown(res: dict) -> str:
    s, k = res["scoring"], res["knn"]
    lines = [
        f"# GPU scoring benchmark ({res['device']})",
        "",
        f"torch {res['torch']}, faiss {k['faiss']}; command: `{res['command']}`",
        "",
        f"## MC-dropout head mode, {s['backbone']} {s['image_size']}px, pool {s['pool']}, "
        f"batch {s['batch']}, autocast {s['autocast']}",
        "",
        "| method | images/s | time / plain forward |",
        "|---|---|---|",
        f"| plain forward pass | {s['floor_images_per_s']:.0f} | 1.00 |",
    ]
    for t in res["mc_samples"]:
        lines.append(
            f"| mcdropout BALD, T={t} | {s[f'mcdropout_T{t}_images_per_s']:.0f} | "
            f"{s[f'mcdropout_T{t}_over_floor']:.2f} |"
        )
    lines += ["", f"## exact kNN, {k['rows']} x {k['dim']}, k={k['k']}, {k['queries']} queries", ""]
    if "gpu_s" in k:
        lines += [
            "| backend | seconds | queries/s |",
            "|---|---|---|",
            f"| faiss CPU ({k['faiss_cpu_threads']} threads) | {k['cpu_s']:.2f} | "
            f"{k['queries'] / k['cpu_s']:.0f} |",
            f"| GPU: {k['gpu_backend']} | {k['gpu_s']:.3f} | {k['queries'] / k['gpu_s']:.0f} |",
            "",
            f"CPU / GPU: {k['cpu_over_gpu']:.1f}x; identical neighbour sets on "
            f"{100 * k['same_neighbour_sets']:.2f}% of the queries.",
        ]
        if "gpu_all_queries_s" in k:
            lines.append(f"All {k['rows']} queries on the GPU: {k['gpu_all_queries_s']:.2f} s.")
    else:
        lines.append(f"faiss CPU: {k['cpu_s']:.2f} s; GPU: {k['gpu']}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for summary.json and summary.md")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--pool", type=int, default=4096)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--mc-samples", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--knn-rows", type=int, default=100_000)
    ap.add_argument("--knn-dim", type=int, default=2048)
    ap.add_argument("--knn-queries", type=int, default=5_000)
    ap.add_argument(
        "--no-knn-all-queries",
        dest="knn_all_queries_gpu",
        action="store_false",
        help="skip timing all rows as queries on the GPU",
    )
    ap.add_argument("--small", action="store_true", help="a seconds-long run to check the script")
    args = ap.parse_args()
    if args.small:
        args.backbone, args.pool, args.image_size, args.batch = "resnet18", 64, 64, 32
        args.knn_rows, args.knn_dim, args.knn_queries, args.repeats = 5_000, 256, 500, 1
    device = torch.device(args.device)
    t0 = time.perf_counter()
    res = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "mc_samples": args.mc_samples,
        "command": "python benchmarks/gpu_scoring.py " + " ".join(sys.argv[1:]),
    }
    res["scoring"] = scoring(args, device)
    res["knn"] = knn(args, device)
    res["total_s"] = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(res, indent=2))
    (out / "summary.md").write_text(markdown(res))
    print(markdown(res))
    print(f"total {res['total_s']:.0f} s; wrote {out / 'summary.json'} and {out / 'summary.md'}")


if __name__ == "__main__":
    main()
