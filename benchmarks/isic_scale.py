"""Issue 22: what a researcher waits for at ISIC 2019 r = 100 scale: the curriculum against the
full-set baseline and a bare PyTorch loop, on one machine.

Three measurements on the same data, model and epoch budget, one after the other:

* **full set**: `flexsample.run(recipe="paper-control")`, the authors' training on the full
  training set from the first epoch (their control);
* **curriculum**: `flexsample.run(recipe="paper")`, Flexible Sampling as the authors run it
  (prototype anchors, plateau/interval queries, MC-dropout BALD T = 10, class-aware sampler,
  class-balanced focal loss, SGD, one step-level cosine);
* **bare loop**: the same timm model and the same DataLoader over the same training split in
  plain PyTorch (AdamW, cross-entropy, bf16 autocast and channels_last on CUDA, one
  `float(loss)` per step as the trainer does), the throughput anchor.

Data. `synthetic-lt --profile isic2019-r100` (the official r = 100 training counts: 5000, 2590,
1342, 695, 360, 187, 97, 51 = 10,322 images; val 50 and test 100 per class) has no decoded
cache: it renders every item on demand (about 10-25 ms per 224 px image on one core), which is
not the path ISIC images take. So its images are rendered once to JPEG files (quality 95, the
canonical square size) under `--work`, listed in a datalist CSV (image, label, split) and
read through `--dataset datalist` with `cache_dir`: the decoded cache (an (N, 3, S, S) uint8
memmap) that ISIC runs use. The cache is built once before anything is timed (its one-off
build time is reported apart). `--scale` multiplies the training counts (floor, at least
`--min-per-class`), for the CPU mode.

Weights. No network: on ISIC `--recipe paper` starts from timm's ImageNet weights, whose only
cost role is that the prototype anchors take their features from one eval pass of that model
over the training set. Here a random-init state of the same backbone (seed 0) is saved to a
local file and given as `pretrained` to both runs (and loaded by the bare loop): the same
compute as the ISIC recipe, without the download and without the SSL pre-training the
`auto` anchor features would otherwise run for a random-init model. `--anchor-features ssl`
runs that pre-training instead (its seconds are the runs' `pretrain_s`).

Order: a warm-up run (the full-set run for one epoch: the pipeline's one-off imports and first
calls, cuDNN's kernel choices and the memmap's pages would otherwise land in whichever run
comes first), the bare loop, the full-set run, the curriculum run.

What is reported (per measurement, from one process, wall clock by `time.perf_counter`):

* **wall**: the whole `flexsample.run(...)` call (dataset from the cache, model, anchors,
  training, validation, scoring, test evaluation, run-folder outputs); the bare loop's is its
  epochs. `run_total_s` is the run's own `timings.total_s`.
* **training images/s**: training samples / training seconds, from the trainer's own per-epoch
  report (`EpochResult.seconds`, the data loading and the optimizer steps of the epoch,
  validation excluded), read through an engine callback (`on_epoch_result`). `steady`: the
  epochs after each loop's first (worker start-up, cuDNN autotuning). The ratio to the bare
  loop uses the steady figures.
* **scoring**: each query's `score_s` from rounds.jsonl (the scoring passes of that step); per
  query (mean, max) and in all. The full-set run makes no query.
* **data-loading stall**: the time the training loop waits for its next batch. The trainer has
  no per-batch hook, so the benchmark wraps the training loader's iterator
  (`flexsample.training.data.SplitLoader.__call__`, for training loaders only, wrapped in this
  process while the runs last; no project file changes): the seconds spent inside `next()` of
  every training pass are summed and attributed to epochs by the callback. The bare loop times
  its own `next()` the same way. Both loops synchronise with the device once per step (the
  trainer reads the loss as a float every step, the bare loop too), so a wait for a batch is
  time the GPU sits idle. Reported in seconds and as a share of training time.
* **GPU memory peak**: `torch.cuda.max_memory_allocated` over each measurement (reset before
  it); "n/a" on a CPU.
* **ratios**: flexsample training throughput / the bare loop's (per run); curriculum wall /
  full-set wall; all scoring / the curriculum's wall; stall / training time.
* **projection to the paper's 120 epochs** when fewer are run (`--epochs`): wall +
  (epoch seconds, training and validation) x (120 / epochs - 1). The `plateau` policy's
  warm-up, patience and interval are fractions of the budget, so the number of queries (about
  20) and the subset's growth per query stay the same: scoring time does not scale, training
  and validation do. A projection, labelled as such, not a measurement.

Full mode, one GPU, as one script under ten minutes (an estimate, 6 to 8 minutes on an H100:
not yet measured, no session has had a GPU). `benchmarks/gpu_issue22.sh` runs it on a GPU
machine with no network (installing carried wheels and this checkout first); the command:

    timeout 580 python benchmarks/isic_scale.py --epochs 24 --bare-epochs 2 \
        --json benchmarks/out/isic_scale/isic_scale_gpu.json

(224 px, resnet50, batch 32 (the recipe's), the full r = 100 counts.) `--epochs 24` is the
paper's budget / 5 and keeps its query structure exactly: warm-up 4, patience 1, interval 1
epochs, so about 20 queries, as 20, 7 and 5 of 120 epochs give; training and validation
time scale by 5 to 120 epochs (the projection line), scoring does not. `--epochs 120` is the
paper's own budget (about 5x the training time: beyond one ten-minute command).
CPU mode, 20 s on an idle 2-core machine:

    python benchmarks/isic_scale.py --small --json /tmp/isic_small.json

One tenth of the ISIC sizes with the GPU command's 24 epochs, about 6 minutes on 2 cores (the
CPU figures of benchmarks/RESULTS.md, C5):

    python benchmarks/isic_scale.py --small --scale 0.1 --epochs 24 --rounds 6 --bare-epochs 3

(`--small`: 64 px, resnet18, 2 epochs (2 rounds x 1 epoch: one query after the first),
training counts x 0.01 (103 images), 4 val and 4 test images per class.) Prints a Markdown
table and the device's exact name.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PAPER_EPOCHS = 120
PROFILE = "isic2019-r100"

# ---------------------------------------------------------------- data


def class_counts(scale: float, min_per_class: int) -> list[int]:
    """The official r = 100 training counts, times `scale` (floor), at least `min_per_class`."""
    from flexsample.datasets.profiles import isic2019_train_counts

    full = isic2019_train_counts(100)
    if scale >= 1.0:
        return list(full)
    return [min(n, max(int(min_per_class), int(math.floor(n * scale)))) for n in full]


def _render_chunk(args: tuple[int, list[tuple[str, int, str]]]) -> None:
    """Render items of synthetic-lt (split, index, path) to JPEG files (a worker's share)."""
    from PIL import Image

    from flexsample.datasets.base import build_dataset

    size, jobs = args
    ds = build_dataset("synthetic-lt", {"profile": PROFILE, "image_size": size})
    items = {s: getattr(ds, s).torch_dataset(False) for s in ("train", "val", "test")}
    for split, i, path in jobs:
        chw = items[split].square(int(i))
        Image.fromarray(chw.permute(1, 2, 0).numpy()).save(path, quality=95)


def prepare_files(
    work: Path, size: int, counts: list[int], val_per_class: int, test_per_class: int
) -> tuple[Path, float]:
    """synthetic-lt's ISIC r = 100 images as JPEGs and a datalist CSV; reused when complete.

    Per class the first n items (in synthetic-lt's split order) of the wanted count are kept.
    Returns the CSV and the seconds spent rendering (0 when reused)."""
    from flexsample.datasets.base import build_dataset

    tag = f"r100-{size}px-" + "-".join(map(str, counts)) + f"-v{val_per_class}-t{test_per_class}"
    folder = work / "data" / tag
    csv_path = folder / "datalist.csv"
    done = folder / "complete"
    if done.is_file() and csv_path.is_file():
        return csv_path, 0.0
    ds = build_dataset("synthetic-lt", {"profile": PROFILE, "image_size": size})
    names = ds.class_names
    want = {
        "train": counts,
        "val": [val_per_class] * len(names),
        "test": [test_per_class] * len(names),
    }
    rows, jobs = [], []
    for split, per_class in want.items():
        labels = getattr(ds, split).labels
        (folder / split).mkdir(parents=True, exist_ok=True)
        for c, n in enumerate(per_class):
            for i in np.flatnonzero(labels == c)[: int(n)]:
                rel = f"{split}/{split}_{int(i):06d}.jpg"
                rows.append((rel, names[c], split))
                jobs.append((split, int(i), str(folder / rel)))
    t0 = time.perf_counter()
    procs = min(os.cpu_count() or 1, 16)
    if len(jobs) < 2000 or procs == 1:
        _render_chunk((size, jobs))
    else:
        chunks = [jobs[k::procs] for k in range(procs)]
        with ProcessPoolExecutor(procs) as pool:
            list(pool.map(_render_chunk, [(size, ch) for ch in chunks]))
    render_s = time.perf_counter() - t0
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "split"])
        w.writerows(rows)
    done.write_text("ok\n")
    return csv_path, render_s


def random_weights(work: Path, backbone: str, num_classes: int) -> Path:
    """A random-init (seed 0) state of the timm backbone as a local weights file."""
    import timm

    path = work / "weights" / f"{backbone}-random-seed0.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = timm.create_model(backbone, pretrained=False, num_classes=num_classes)
        torch.save(model.state_dict(), path)
    return path


# ---------------------------------------------------------------- measuring


class Stall:
    """Seconds spent waiting inside `next()` of training loaders (summed)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.batches = 0

    def timed(self, it: Iterator[Any]) -> Iterator[Any]:
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.total += time.perf_counter() - t0
            self.batches += 1
            yield batch


@contextlib.contextmanager
def stall_on_training_loaders(stall: Stall) -> Iterator[None]:
    """Wrap `SplitLoader.__call__` (training loaders only) in this process while it lasts."""
    from flexsample.training.data import SplitLoader

    original = SplitLoader.__call__

    def wrapped(self: SplitLoader, *args: Any, **kwargs: Any) -> Iterator[Any]:
        it = original(self, *args, **kwargs)
        if not self.train:
            return it
        return stall.timed(iter(it))

    SplitLoader.__call__ = wrapped  # type: ignore[method-assign]
    try:
        yield
    finally:
        SplitLoader.__call__ = original  # type: ignore[method-assign]


def make_meter(stall: Stall) -> Any:
    """An engine callback recording each epoch: training seconds and samples (the trainer's
    report), the stall within it, and the epoch's wall (training + validation)."""
    from flexsample.engine.loop import Callback

    class EpochMeter(Callback):
        def __init__(self) -> None:
            self.epochs: list[dict[str, Any]] = []
            self._t0 = 0.0
            self._stall0 = 0.0
            self._subset = 0

        def on_epoch_start(self, epoch: int, subset_size: int) -> None:
            self._t0, self._stall0, self._subset = time.perf_counter(), stall.total, subset_size

        def on_epoch_result(self, epoch: int, result: Any) -> None:
            self.epochs.append(
                {
                    "epoch": int(epoch),
                    "subset_size": int(self._subset),
                    "train_s": float(result.seconds),
                    "samples": int(result.extra.get("samples", self._subset)),
                    "stall_s": stall.total - self._stall0,
                }
            )

        def on_epoch_end(self, epoch: int, loss: float, val: Any, improved: bool) -> None:
            if self.epochs:
                self.epochs[-1]["epoch_s"] = time.perf_counter() - self._t0

    return EpochMeter()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        import gc

        gc.collect()  # the previous measurement's model and optimizer are gone
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def throughput(epochs: list[dict[str, Any]], skip_first: bool) -> float:
    rows = epochs[1:] if skip_first and len(epochs) > 1 else epochs
    seconds = sum(r["train_s"] for r in rows)
    return sum(r["samples"] for r in rows) / seconds if seconds > 0 else float("nan")


def flexsample_run(
    name: str,
    recipe: str,
    common: dict[str, Any],
    work: Path,
    device: torch.device,
    projection_epochs: int,
) -> dict[str, Any]:
    """One `flexsample.run` with the epoch meter and the stall wrapper; its figures."""
    import flexsample

    stall = Stall()
    meter = make_meter(stall)
    reset_peak(device)
    t0 = time.perf_counter()
    with stall_on_training_loaders(stall):
        res = flexsample.run(
            recipe=recipe, out=work / "runs" / name, overwrite=True, callbacks=[meter], **common
        )
    sync(device)
    wall = time.perf_counter() - t0
    compute = res.results["compute"]
    queries = [float(r["score_s"]) for r in res.rounds if int(r["step"]) > 0]
    score_s = float(compute["score_s"])
    train_s = float(compute["train_s"])
    epoch_s = sum(r.get("epoch_s", r["train_s"]) for r in meter.epochs)
    epochs = len(meter.epochs)
    out = {
        "recipe": recipe,
        "wall_s": wall,
        "run_total_s": float(res.results["timings"]["total_s"]),
        "epochs": epochs,
        "train_s": train_s,
        "train_samples": int(compute["train_samples"]),
        "train_img_s": int(compute["train_samples"]) / train_s if train_s > 0 else float("nan"),
        "train_img_s_steady": throughput(meter.epochs, skip_first=True),
        "epoch_s": epoch_s,  # training + validation, summed over epochs
        "queries": len(queries),
        "score_s": score_s,
        "score_s_per_query": float(np.mean(queries)) if queries else 0.0,
        "score_s_per_query_max": max(queries) if queries else 0.0,
        "score_samples": int(compute["score_samples"]),
        "pretrain_s": float(compute.get("pretrain_s", 0.0)),
        "eval_s": float(compute.get("eval_s", 0.0)),
        "stall_s": stall.total,
        "stall_share": stall.total / train_s if train_s > 0 else float("nan"),
        "gpu_mem_peak_mib": peak_mib(device),
        "final_subset_size": int(res.rounds[-1]["subset_size"]) if res.rounds else 0,
        "test_balanced_accuracy": float(res.test["balanced_accuracy"]),
        "batch_size": int(res.config.batch_size),
        "per_epoch": meter.epochs,
    }
    if epochs and epochs != projection_epochs:
        out["projected_wall_s_at_paper_epochs"] = wall + epoch_s * (projection_epochs / epochs - 1)
    return out


def warm_up(common: dict[str, Any], work: Path) -> float:
    """One epoch of the full-set run first (same data, model and device), so that neither
    timed run pays the pipeline's one-off imports and first calls (plots, metrics, cuDNN's
    choice of kernels, the memmap's pages); seconds taken."""
    import flexsample

    t0 = time.perf_counter()
    flexsample.run(
        recipe="paper-control",
        out=work / "runs" / "warm_up",
        overwrite=True,
        **{**common, "rounds": 1, "epochs_per_round": 1},
    )
    return time.perf_counter() - t0


def bare_loop(
    ds: Any,
    backbone: str,
    weights: Path,
    batch_size: int,
    epochs: int,
    workers: int | None,
    device: torch.device,
) -> dict[str, Any]:
    """The same timm model and DataLoader settings in plain PyTorch (AdamW, CE)."""
    import timm
    from torch.utils.data import DataLoader

    from flexsample.datasets.images import dataloader_options

    torch.manual_seed(0)
    model = timm.create_model(
        backbone, pretrained=False, num_classes=ds.num_classes, drop_rate=0.5
    )  # dropout before the classifier, as the contract
    state = torch.load(weights, map_location="cpu", weights_only=True)
    head = model.get_classifier()
    head_name = next(n for n, m in model.named_modules() if m is head)
    model.load_state_dict(
        {k: v for k, v in state.items() if not k.startswith(head_name + ".")}, strict=False
    )
    cuda = device.type == "cuda"
    model = model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    cached = getattr(ds.train, "cache", None) is not None
    loader = DataLoader(
        ds.train.torch_dataset(True),
        batch_size=batch_size,
        shuffle=True,
        drop_last=False,
        generator=torch.Generator().manual_seed(0),
        **dataloader_options(device, workers, True, cached),
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    stall = Stall()
    rows = []
    reset_peak(device)
    t_all = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        t0, s0, seen = time.perf_counter(), stall.total, 0
        for x, y in stall.timed(iter(loader)):
            if len(y) < 2:  # a lone trailing sample: skipped, as the trainer does
                continue
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            float(loss.detach())  # one sync per step, as the trainer's loss bookkeeping
            seen += len(y)
        sync(device)
        rows.append(
            {
                "epoch": epoch,
                "train_s": time.perf_counter() - t0,
                "samples": seen,
                "stall_s": stall.total - s0,
            }
        )
    wall = time.perf_counter() - t_all
    train_s = sum(r["train_s"] for r in rows)
    return {
        "wall_s": wall,
        "epochs": epochs,
        "train_s": train_s,
        "train_samples": sum(r["samples"] for r in rows),
        "train_img_s": throughput(rows, skip_first=False),
        "train_img_s_steady": throughput(rows, skip_first=True),
        "stall_s": stall.total,
        "stall_share": stall.total / train_s if train_s > 0 else float("nan"),
        "gpu_mem_peak_mib": peak_mib(device),
        "batch_size": batch_size,
        "per_epoch": rows,
    }


# ---------------------------------------------------------------- report


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"


def ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else float("nan")


def table(out: dict[str, Any]) -> str:
    cur, full, bare = out["curriculum"], out["full_set"], out["bare"]

    def mem(r: dict[str, Any]) -> str:
        v = r.get("gpu_mem_peak_mib")
        return "n/a" if v is None else f"{v:,.0f}"

    def scoring(r: dict[str, Any]) -> str:
        if not r.get("queries"):
            return "-"
        return (
            f"{r['score_s_per_query']:.2f} / {r['score_s_per_query_max']:.2f} "
            f"({r['queries']} queries)"
        )

    c = out["config"]
    lines = [
        f"device: {out['device_name']} (torch {out['torch']}, {out['device']})",
        f"data: synthetic-lt {PROFILE} rendered to JPEG, datalist + decoded cache; train "
        f"{c['train_images']} ({'/'.join(map(str, c['train_counts']))}), val {c['val_images']}, "
        f"test {c['test_images']}; {c['image_size']} px, {c['backbone']}, "
        f"{c['rounds']} x {c['epochs_per_round']} epochs, batch {cur['batch_size']}, "
        f"workers {c['workers'] if c['workers'] is not None else 'default'}",
        "",
        "| figure | curriculum (paper) | full set (paper-control) | bare PyTorch loop |",
        "|---|---|---|---|",
        f"| wall (s) | {cur['wall_s']:.1f} | {full['wall_s']:.1f} | {bare['wall_s']:.1f} |",
        f"| epochs | {cur['epochs']} | {full['epochs']} | {bare['epochs']} |",
        f"| training images | {cur['train_samples']:,} | {full['train_samples']:,} | "
        f"{bare['train_samples']:,} |",
        f"| training (s) | {cur['train_s']:.1f} | {full['train_s']:.1f} | {bare['train_s']:.1f} |",
        f"| training images/s, all epochs | {cur['train_img_s']:.1f} | {full['train_img_s']:.1f} "
        f"| {bare['train_img_s']:.1f} |",
        f"| training images/s, after the first epoch | {cur['train_img_s_steady']:.1f} | "
        f"{full['train_img_s_steady']:.1f} | {bare['train_img_s_steady']:.1f} |",
        f"| scoring per query, mean / max (s) | {scoring(cur)} | {scoring(full)} | - |",
        f"| scoring in all (s) | {cur['score_s']:.2f} | {full['score_s']:.2f} | - |",
        f"| data-loading stall (s, % of training) | {cur['stall_s']:.2f} "
        f"({100 * cur['stall_share']:.1f} %) | {full['stall_s']:.2f} "
        f"({100 * full['stall_share']:.1f} %) | {bare['stall_s']:.2f} "
        f"({100 * bare['stall_share']:.1f} %) |",
        f"| GPU memory peak (MiB) | {mem(cur)} | {mem(full)} | {mem(bare)} |",
        f"| final subset / test balanced acc. | {cur['final_subset_size']:,} / "
        f"{cur['test_balanced_accuracy']:.3f} | {full['final_subset_size']:,} / "
        f"{full['test_balanced_accuracy']:.3f} | - |",
        "",
    ]
    r = out["ratios"]
    lines += [
        f"training throughput / bare loop (after the first epoch): curriculum "
        f"{r['curriculum_train_throughput_vs_bare']:.2f}x, full set "
        f"{r['full_set_train_throughput_vs_bare']:.2f}x (target >= 0.9)",
        f"curriculum wall / full-set wall: {r['curriculum_wall_vs_full_set_wall']:.2f} "
        "(target <= 0.65)",
        "scoring share of the curriculum's wall: "
        f"{100 * r['scoring_share_of_curriculum_wall']:.1f} % (target <= 10 %)",
        f"data-loading stall share of training: curriculum {100 * cur['stall_share']:.1f} %, "
        f"full set {100 * full['stall_share']:.1f} %, bare {100 * bare['stall_share']:.1f} % "
        "(target <= 5 %)",
    ]
    if "projected_wall_s_at_paper_epochs" in cur and "projected_wall_s_at_paper_epochs" in full:
        pc, pf = cur["projected_wall_s_at_paper_epochs"], full["projected_wall_s_at_paper_epochs"]
        lines.append(
            f"projected to {PAPER_EPOCHS} epochs (training and validation scaled, scoring not): "
            f"curriculum {pc / 60:.1f} min, full set {pf / 60:.1f} min, ratio {pc / pf:.2f}; "
            f"scoring share {100 * cur['score_s'] / pc:.1f} %"
        )
    p = out["prepare"]
    lines.append(
        f"one-off: rendering {p['render_s']:.1f} s, decoded cache {p['cache_s']:.1f} s, warm-up "
        f"run {p['warm_up_s']:.1f} s; "
        f"load average {out['load_before'][0]:.1f} before, {out['load_after'][0]:.1f} after "
        f"({os.cpu_count()} CPUs); total {out['total_s']:.0f} s"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--small",
        action="store_true",
        help="CPU mode: 64 px, resnet18, 2 x 1 epochs, counts x 0.01, 4 val/test",
    )
    ap.add_argument("--image-size", type=int, help="default 224 (small: 64)")
    ap.add_argument("--backbone", help="timm name; default resnet50 (small: resnet18)")
    ap.add_argument(
        "--epochs",
        type=int,
        help=f"epoch budget of both runs (default {PAPER_EPOCHS}, the paper's; "
        "small: 2); split as --rounds rounds",
    )
    ap.add_argument("--rounds", type=int, help="rounds (default 6 as the recipe; small: 2)")
    ap.add_argument("--bare-epochs", type=int, help="epochs of the bare loop (default 3; small 2)")
    ap.add_argument("--scale", type=float, help="training counts x this (default 1; small 0.01)")
    ap.add_argument("--min-per-class", type=int, default=2)
    ap.add_argument("--val-per-class", type=int, help="default 50 (small: 4)")
    ap.add_argument("--test-per-class", type=int, help="default 100 (small: 4)")
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers of all three loops (default: the project's)",
    )
    ap.add_argument("--score-batch-size", type=int, default=None)
    ap.add_argument(
        "--anchor-features",
        choices=["weights", "ssl"],
        default="weights",
        help="weights: a random-init weights file stands for ImageNet's (one "
        "feature pass); ssl: self-supervised pre-training as without weights",
    )
    ap.add_argument(
        "--no-warm-up",
        action="store_true",
        help="skip the warm-up run (figures then carry one-off costs; for tests)",
    )
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "isic_scale")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()

    small = args.small
    size = args.image_size or (64 if small else 224)
    backbone = args.backbone or ("resnet18" if small else "resnet50")
    epochs = args.epochs or (2 if small else PAPER_EPOCHS)
    rounds = args.rounds or (2 if small else 6)
    if epochs % rounds:
        rounds = math.gcd(epochs, rounds)
    bare_epochs = args.bare_epochs or (2 if small else 3)
    scale = args.scale if args.scale is not None else (0.01 if small else 1.0)
    val_n = args.val_per_class or (4 if small else 50)
    test_n = args.test_per_class or (4 if small else 100)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev_name = args.device
    if dev_name == "auto":
        dev_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev_name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load_before = os.getloadavg()

    from flexsample.datasets.base import build_dataset

    counts = class_counts(scale, args.min_per_class)
    csv_path, render_s = prepare_files(work, size, counts, val_n, test_n)
    cache_dir = work / "cache"
    ds_options = {"datalist": str(csv_path), "image_size": size}
    t0 = time.perf_counter()
    ds = build_dataset("datalist", ds_options, cache_dir=str(cache_dir))  # builds the cache once
    cache_s = time.perf_counter() - t0
    weights = random_weights(work, backbone, ds.num_classes)
    print(
        f"device: {device_name(device)}; data {csv_path.parent.name}; "
        f"rendering {render_s:.1f} s, cache {cache_s:.1f} s",
        flush=True,
    )

    common: dict[str, Any] = {
        "dataset": "datalist",
        "dataset_options": ds_options,
        "cache_dir": str(cache_dir),
        "backbone": backbone,
        "rounds": rounds,
        "epochs_per_round": epochs // rounds,
        "device": str(device),
        "seed": 0,
    }
    if args.anchor_features == "weights":
        common["pretrained"] = str(weights)
    if args.workers is not None:
        common["workers"] = args.workers
    if args.score_batch_size is not None:
        common["score_batch_size"] = args.score_batch_size

    out: dict[str, Any] = {
        "mode": "small" if small else "full",
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "load_before": list(load_before),
    }

    def save() -> None:
        """The JSON so far, after each phase: a run stopped by its time limit keeps them."""
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=2))

    # a warm-up run, the bare loop, then the two runs
    warm_s = 0.0 if args.no_warm_up else warm_up(common, work)
    batch = 32  # the recipe's (checked against the runs' resolved configs below)
    out["bare"] = bare_loop(ds, backbone, weights, batch, bare_epochs, args.workers, device)
    print(f"bare loop: {out['bare']['wall_s']:.1f} s", flush=True)
    save()
    out["full_set"] = flexsample_run(
        "full_set", "paper-control", common, work, device, PAPER_EPOCHS
    )
    print(f"full set: {out['full_set']['wall_s']:.1f} s", flush=True)
    save()
    out["curriculum"] = flexsample_run("curriculum", "paper", common, work, device, PAPER_EPOCHS)
    print(f"curriculum: {out['curriculum']['wall_s']:.1f} s", flush=True)
    if out["curriculum"]["batch_size"] != batch:
        print(
            f"note: the recipe's batch size is {out['curriculum']['batch_size']}, the bare "
            f"loop used {batch}"
        )

    cur, full, bare = out["curriculum"], out["full_set"], out["bare"]
    out["ratios"] = {
        "curriculum_train_throughput_vs_bare": ratio(
            cur["train_img_s_steady"], bare["train_img_s_steady"]
        ),
        "full_set_train_throughput_vs_bare": ratio(
            full["train_img_s_steady"], bare["train_img_s_steady"]
        ),
        "curriculum_wall_vs_full_set_wall": ratio(cur["wall_s"], full["wall_s"]),
        "scoring_share_of_curriculum_wall": ratio(cur["score_s"], cur["wall_s"]),
        "curriculum_samples_vs_full_set": ratio(cur["train_samples"], full["train_samples"]),
    }
    out["config"] = {
        "image_size": size,
        "backbone": backbone,
        "epochs": epochs,
        "rounds": rounds,
        "epochs_per_round": epochs // rounds,
        "bare_epochs": bare_epochs,
        "scale": scale,
        "train_counts": counts,
        "train_images": int(sum(counts)),
        "val_images": val_n * len(counts),
        "test_images": test_n * len(counts),
        "workers": args.workers,
        "anchor_features": args.anchor_features,
        "torch_threads": torch.get_num_threads(),
    }
    out["prepare"] = {"render_s": render_s, "cache_s": cache_s, "warm_up_s": warm_s}
    out["load_after"] = list(os.getloadavg())
    out["total_s"] = time.perf_counter() - t_start
    out["table"] = table(out)
    print(out["table"])
    save()


if __name__ == "__main__":
    main()
