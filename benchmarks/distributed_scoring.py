"""Sharded scoring throughput: one process vs several on the same pool (issue 10).

The engine shards scoring over a `torch.distributed` group (`ScoringContext(ranks=...)`):
each rank pushes its contiguous shard of the candidates through the backbone, the features
(or the per-candidate MC values, or each block of MC draws) are all-gathered, and every rank
finishes the estimator on the full arrays. This measures what that buys on one machine.

CPU (default): a pool of N random 1x28x28 images (digits-lt sized) and the SmallCNN
(width 32, 10 classes, dropout 0.5 before the head), scored with

* mcdropout-head -- BALD over T=20 hashed dropout masks on the pooled features (backbone once),
* mcdropout-full -- BALD over T=20 complete stochastic passes (T backbone passes; a slice of
                    the pool, `--full-n`, keeps it short),
* density        -- kNN density over the whole split's features (the kNN search is not
                    sharded: every rank runs it on the gathered features),

in three configurations, all inside one 2-process gloo job so that they can be interleaved
(repeat by repeat, in rotating order) and share the machine's load alike:

* 1 process x 1 thread   -- rank 0 alone (`Ranks.local()`), the other rank idles in a barrier
                            (gloo waits without spinning);
* 1 process x P threads  -- the same with P intra-op threads: the fair baseline for P cores;
* P processes x 1 thread -- sharded over the group.

Each cell is the median wall time of `--repeats` repeats (barrier before and after, a fresh
context each time: nothing cached). Sharded scores are checked against the single-process
scores of the same weights. `--device cuda`: one process on one GPU, and with G >= 2 GPUs
also G processes (NCCL), one GPU each.

    .venv/bin/python benchmarks/distributed_scoring.py [--n 2000] [--repeats 3] [--json out.json]
    .venv/bin/python benchmarks/distributed_scoring.py --device cuda --backbone resnet18 \\
        --size 64 --channels 3 --n 20000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import torch

from flexsample.engine.context import ScoringContext, tensor_inputs
from flexsample.engine.distributed import Ranks
from flexsample.engine.scoring import score_candidates
from flexsample.estimators import build_estimator
from flexsample.training.models import create_model

NUM_CLASSES = 10


class TimedRanks(Ranks):
    """`Ranks` that adds up the seconds spent in `gather_rows` (transfer and waiting for the
    slowest rank: every gather synchronises the group)."""

    def __init__(self) -> None:
        super().__init__()
        self.gather_s = 0.0

    def gather_rows(self, local: np.ndarray | torch.Tensor) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return super().gather_rows(local)
        finally:
            self.gather_s += time.perf_counter() - t0


def loadavg() -> str:
    try:
        with open("/proc/loadavg", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return "n/a"


def make_pool(n: int, channels: int, size: int) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn((n, channels, size, size), generator=g)
    labels = np.arange(n, dtype=np.int64) % NUM_CLASSES
    return x, labels


def cases(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any], int]]:
    """(name, estimator spec, options, candidates)."""
    t = args.mc_samples
    return [
        ("mcdropout-head", "mcdropout", {"mc_samples": t}, args.n),
        ("mcdropout-full", "mcdropout", {"mc_samples": t, "mc_mode": "full"}, args.full_n),
        ("density", "density", {}, args.n),
    ]


def configs(args: argparse.Namespace, world: int) -> list[tuple[str, int, int | None]]:
    """(label, processes, threads per process; None = leave torch's default)."""
    if args.device == "cuda":
        out: list[tuple[str, int, int | None]] = [("1 process, 1 GPU", 1, None)]
        if world > 1:
            out.append((f"{world} processes, 1 GPU each", world, None))
        return out
    if world == 1:
        return [("1 process x 1 thread", 1, 1)]
    return [
        ("1 process x 1 thread", 1, 1),
        (f"1 process x {world} threads", 1, world),
        (f"{world} processes x 1 thread", world, 1),
    ]


def score(
    model: torch.nn.Module,
    x: torch.Tensor,
    labels: np.ndarray,
    spec: str,
    options: dict[str, Any],
    n: int,
    ranks: Ranks,
    batch_size: int,
) -> np.ndarray:
    ctx = ScoringContext(
        model, tensor_inputs(x), labels, seed=0, step=1, batch_size=batch_size, ranks=ranks
    )
    return score_candidates(build_estimator(spec, **options), ctx, np.arange(n))


def _job(rank: int, world: int, args: argparse.Namespace, store: str) -> None:
    """One rank: every (case, configuration, repeat); rank 0 reports."""
    import torch.distributed as dist

    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(1)
    if world > 1:
        backend = "nccl" if cuda else "gloo"
        dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        _measure(rank, world, args)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _measure(rank: int, world: int, args: argparse.Namespace) -> None:
    device = torch.device("cuda", rank) if args.device == "cuda" else torch.device("cpu")
    torch.manual_seed(0)
    model = create_model(args.backbone, NUM_CLASSES, args.channels, dropout=0.5).to(device)
    model.eval()
    x, labels = make_pool(args.n, args.channels, args.size)
    group = TimedRanks() if world > 1 else Ranks.local()
    alone = Ranks.local()
    default_threads = torch.get_num_threads()
    all_cases, all_configs = cases(args), configs(args, world)

    def run(cfg: tuple[str, int, int | None], case: tuple, n: int | None = None) -> dict:
        """One timed scoring pass of `case` under `cfg`, on every rank (collectives)."""
        _, procs, threads = cfg
        _, spec, options, size = case
        works = procs > 1 or rank == 0
        ranks = group if procs > 1 else alone
        if threads is not None and works:
            torch.set_num_threads(threads)
        if isinstance(ranks, TimedRanks):
            ranks.gather_s = 0.0
        group.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        out = None
        if works:
            out = score(model, x, labels, spec, options, n or size, ranks, args.batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        busy, cpu = time.perf_counter() - t0, time.process_time() - c0
        group.barrier()
        wall = time.perf_counter() - t0
        torch.set_num_threads(1 if args.device == "cpu" else default_threads)
        gathered = getattr(ranks, "gather_s", 0.0)
        per_rank = group.gather_rows(np.array([[busy, gathered, cpu]]))
        return {"wall": wall, "per_rank": per_rank, "scores": out}

    for cfg in all_configs:  # warm-up: kernels, allocator, thread pools (density: same kernels)
        for case in all_cases:
            if case[1] != "density":
                run(cfg, case, n=min(64 if case[2].get("mc_mode") != "full" else 8, case[3]))
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    reference: dict[str, np.ndarray] = {}
    for rep in range(args.repeats):
        for case in all_cases:
            order = all_configs[rep % len(all_configs) :] + all_configs[: rep % len(all_configs)]
            for cfg in order:
                _record(cells, reference, case, cfg, run(cfg, case), rank)
    transfer = _gather_alone(group, args.n, int(model.head.in_features), world)
    if rank == 0:
        _report(args, world, all_cases, all_configs, cells, transfer)


def _record(
    cells: dict[tuple[str, str], dict[str, Any]],
    reference: dict[str, np.ndarray],
    case: tuple,
    cfg: tuple[str, int, int | None],
    got: dict,
    rank: int,
) -> None:
    """Add one timed pass to its cell; rank 0 compares its scores with one process's."""
    cell = cells.setdefault(
        (case[0], cfg[0]),
        {"wall": [], "busy": [], "gather": [], "cores": [], "diff": 0.0},
    )
    cell["wall"].append(got["wall"])
    cell["busy"].append(got["per_rank"][:, 0].tolist())
    cell["gather"].append(got["per_rank"][:, 1].tolist())
    # CPU seconds of every working rank (all its threads) per wall second
    cell["cores"].append(got["per_rank"][: cfg[1], 2].sum() / got["wall"])
    if rank == 0:
        if cfg[1] == 1 and case[0] not in reference:
            reference[case[0]] = got["scores"]
        elif case[0] in reference:
            diff = np.abs(got["scores"] - reference[case[0]]).max()
            cell["diff"] = max(cell["diff"], float(diff))


def _gather_alone(group: Ranks, n: int, dim: int, world: int) -> float:
    """Median seconds of one all-gather of the pool's N x D float32 features (each rank
    sends its shard) right after a barrier: the transfer without waiting for a slow rank."""
    if world == 1:
        return 0.0
    lo, hi = group.bounds(n)
    local = np.zeros((hi - lo, dim), np.float32)
    times = []
    for _ in range(7):
        group.barrier()
        t0 = time.perf_counter()
        group.gather_rows(local)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _report(
    args: argparse.Namespace,
    world: int,
    all_cases: list[tuple[str, str, dict[str, Any], int]],
    all_configs: list[tuple[str, int, int | None]],
    cells: dict[tuple[str, str], dict[str, Any]],
    transfer: float,
) -> None:
    rows = []
    for name, _, _, n in all_cases:
        base = None
        for label, procs, threads in all_configs:
            cell = cells[(name, label)]
            wall = statistics.median(cell["wall"])
            if base is None:
                base = wall
            gather = statistics.median(max(g) for g in cell["gather"]) if procs > 1 else 0.0
            # each rank's own work: its time to finish minus its time inside gathers
            compute = [
                statistics.median(
                    b[r] - g[r] for b, g in zip(cell["busy"], cell["gather"], strict=True)
                )
                for r in range(procs)
            ]
            rows.append(
                {
                    "case": name,
                    "config": label,
                    "processes": procs,
                    "threads": threads,
                    "candidates": n,
                    "median_s": wall,
                    "items_per_s": n / wall,
                    "speedup_vs_1x1": base / wall,
                    "gather_s": gather,
                    "compute_s_per_rank": compute,
                    "cores_used": statistics.median(cell["cores"]),
                    "max_abs_diff_vs_1_process": cell["diff"],
                    "walls_s": cell["wall"],
                }
            )
    cols = f"{'case':<16}{'configuration':<28}{'N':>6}{'median s':>10}{'items/s':>10}"
    print(f"\n{cols}{'x vs 1x1':>10}{'cores':>7}{'gather s':>10}  {'compute s/rank':<16}max |diff|")
    for r in rows:
        busy = "/".join(f"{b:.2f}" for b in r["compute_s_per_rank"])
        print(
            f"{r['case']:<16}{r['config']:<28}{r['candidates']:>6}{r['median_s']:>10.2f}"
            f"{r['items_per_s']:>10.0f}{r['speedup_vs_1x1']:>10.2f}{r['cores_used']:>7.2f}"
            f"{r['gather_s']:>10.3f}"
            f"  {busy:<16}{r['max_abs_diff_vs_1_process']:.1e}"
        )
    if world > 1:
        print(
            f"one all-gather of the {args.n} x D float32 features alone (after a barrier): "
            f"{1000 * transfer:.1f} ms"
        )
    if args.device == "cpu" and world > 1:
        print(NOTES_CPU.format(world=world))
    report = {
        "benchmark": "distributed_scoring",
        "device": args.device,
        "world": world,
        "args": vars(args),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
            "gpus": torch.cuda.device_count() if args.device == "cuda" else 0,
            "loadavg_before": args.loadavg_before,
            "loadavg_after": loadavg(),
        },
        "feature_gather_alone_s": transfer,
        "rows": rows,
    }
    print(f"\nloadavg before: {args.loadavg_before}   after: {report['machine']['loadavg_after']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
        print(f"wrote {args.json}")


NOTES_CPU = """
Why {world} processes on {world} shared cores give well under {world}x:
* The fair baseline is 1 process x {world} threads: intra-op threads already use every core
  for the convolutions, so sharding can only win the part that threads do not parallelise
  (Python per batch, small ops, the head matmuls, the reducers).
* Every gather synchronises the group: the features (N x D float32) travel to every rank
  over gloo (loopback TCP), MC values or blocks of draws likewise, and the faster rank waits
  for the slower one. 'gather s' above is that transfer plus the wait.
* 'cores' is the CPU seconds of the working processes (all threads) per wall second: when
  it stays near 1 for 2 processes, the other load on the machine left them one core.
* Not everything is sharded: density's kNN search runs on every rank over the gathered
  features, and so do the estimator's own reductions and the top-k.
* The cores are shared: other processes on the machine (see the load average) take turns
  with both ranks, and two busy processes contend for the same caches and memory bandwidth
  (on a VM, the two vCPUs may even be hyperthreads of one physical core). On a loaded
  machine the threaded baseline suffers too: an OpenMP team waits at every barrier for
  its slowest (preempted) thread, worst for the many small ops of full mode.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--n", type=int, default=None, help="pool size (cpu 2000, cuda 20000)")
    ap.add_argument(
        "--full-n",
        type=int,
        default=None,
        help="candidates of the full-mode case (cpu 100, cuda 2000)",
    )
    ap.add_argument("--mc-samples", type=int, default=20)
    ap.add_argument("--backbone", default="small-cnn")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--procs", type=int, default=None, help="processes (cpu: 2; cuda: the number of GPUs)"
    )
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible")
    args.n = args.n or (20000 if cuda else 2000)
    args.full_n = min(args.full_n or (2000 if cuda else 100), args.n)
    world = args.procs or (torch.cuda.device_count() if cuda else 2)
    if cuda and world > torch.cuda.device_count():
        ap.error(f"--procs {world}: only {torch.cuda.device_count()} GPUs are visible")
    if world < 1:
        ap.error("--procs must be >= 1")
    args.loadavg_before = loadavg()
    print(
        f"distributed scoring: {args.device}, {world} process(es), N={args.n} "
        f"({args.channels}x{args.size}x{args.size}, {args.backbone}), T={args.mc_samples}, "
        f"full-mode N={args.full_n}, batch {args.batch_size}, {args.repeats} repeats; "
        f"loadavg {args.loadavg_before}"
    )
    if world == 1:
        _job(0, 1, args, "")
        return
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_job, args=(world, args, os.path.join(tmp, "store")), nprocs=world)


if __name__ == "__main__":
    main()
