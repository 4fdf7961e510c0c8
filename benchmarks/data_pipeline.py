"""Images/s of the ISIC image pipeline: JPEG decoding vs the decoded cache, eval and train passes.

The engine re-scores the pool at every query step with the eval transform, so the eval pass
(canonical square + normalise; the "resize + centre crop" pass) is the one the cache must speed
up; the augmented train pass is reported both ways too. Input: N generated 384x384 JPEGs (the
size of the common ISIC re-encoding), lesion-like images from `synthetic-lt`'s renderer saved
at quality 90, written once under --work and reused.

    python benchmarks/data_pipeline.py --images 2000 --image-size 224 --workers 0 2 \
        --batch-sizes 32 64

The main process runs torch with --threads intra-op threads (default 1: per-image work does not
profit from more, and DataLoader workers always use one). Prints a Markdown table and writes it
with the raw numbers to --work/data_pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from flexsample.datasets.images import DecodedCache, ImageItems, tune_allocator
from flexsample.datasets.synthetic import class_params, render

REPO = Path(__file__).resolve().parents[1]


def make_jpegs(folder: Path, n: int, side: int = 384, seed: int = 0) -> list[str]:
    """N lesion-like side x side JPEGs (quality 90) named like ISIC images; reused if present."""
    folder.mkdir(parents=True, exist_ok=True)
    params = class_params(8, seed)
    paths = []
    for i in range(n):
        p = folder / f"ISIC_{i:07d}.jpg"
        if not p.is_file():
            arr = render(params, i % 8, side, (seed, 9, i))
            Image.fromarray(arr).save(p, quality=90)
        paths.append(str(p))
    return paths


def timed_pass(items: ImageItems, batch_size: int, workers: int) -> float:
    """Images/s of one full pass through a DataLoader (worker start-up included)."""
    loader = DataLoader(items, batch_size=batch_size, num_workers=workers, shuffle=False)
    t0 = time.perf_counter()
    n = 0
    for x, _ in loader:
        n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument(
        "--tune-allocator",
        action="store_true",
        help="call flexsample.datasets.images.tune_allocator() first",
    )
    ap.add_argument("--passes", nargs="+", choices=["eval", "train"], default=["eval", "train"])
    ap.add_argument("--repeats", type=int, default=2, help="passes per setting; the best counts")
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "data_pipeline")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    tuned = tune_allocator() if args.tune_allocator else False

    t0 = time.perf_counter()
    paths = make_jpegs(args.work / "jpeg384", args.images)
    gen_s = time.perf_counter() - t0
    labels = np.arange(len(paths)) % 8
    cache_dir = args.work / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    t0 = time.perf_counter()
    ref, bad = DecodedCache(cache_dir).build("bench", paths, args.image_size)
    build_s = time.perf_counter() - t0
    assert not bad

    load_before = os.getloadavg()[0]
    rows = []
    for split, train in (("eval", False), ("train (augmented)", True)):
        if split.split()[0] not in args.passes:
            continue
        for bs in args.batch_sizes:
            for workers in args.workers:
                decode = ImageItems(paths, labels, args.image_size, train=train)
                cached = ImageItems(paths, labels, args.image_size, train=train, cache=ref)
                d = max(timed_pass(decode, bs, workers) for _ in range(args.repeats))
                c = max(timed_pass(cached, bs, workers) for _ in range(args.repeats))
                rows.append(
                    {
                        "pass": split,
                        "batch": bs,
                        "workers": workers,
                        "decode_img_s": round(d, 1),
                        "cached_img_s": round(c, 1),
                        "speedup": round(c / d, 2),
                    }
                )
                print(rows[-1], flush=True)

    lines = [
        f"{args.images} JPEGs 384x384 (quality 90) -> {args.image_size}x{args.image_size}, "
        f"main-process torch threads {torch.get_num_threads()}, allocator tuned: {tuned}, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})",
        "",
        "| pass | batch | DataLoader workers | decode (img/s) | cached (img/s) | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pass']} | {r['batch']} | {r['workers']} | {r['decode_img_s']:.0f} | "
            f"{r['cached_img_s']:.0f} | {r['speedup']:.1f}x |"
        )
    mib = Path(ref.file).stat().st_size / 2**20
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    lines += [
        "",
        f"cache build (one-off, threads): {build_s:.1f} s for {args.images} images "
        f"({args.images / build_s:.0f} img/s), {mib:.0f} MiB; JPEG generation {gen_s:.1f} s; "
        f"{load}",
    ]
    print("\n".join(lines))
    out = {
        "rows": rows,
        "cache_build_s": build_s,
        "images": args.images,
        "image_size": args.image_size,
        "batch_sizes": args.batch_sizes,
        "cpus": os.cpu_count(),
        "allocator_tuned": tuned,
        "torch": torch.__version__,
        "table": "\n".join(lines),
    }
    (args.work / "data_pipeline.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
