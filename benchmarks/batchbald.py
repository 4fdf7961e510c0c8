"""BatchBALD: flexsample's `batchbald_batch` vs batchbald_redux's `get_batchbald_batch`.

Both run on the same MC draws: float32 log-probabilities (N, T, C) from a seeded generator
(per-candidate bias plus per-draw noise on the logits), given as they are to the reference
and exponentiated to (T, N, C) probabilities for ours, as the reference exponentiates them.
Both use `--samples` joint configurations: exact joint entropies while C^m <= samples, then
samples // T configurations per draw, redrawn at every pick; the reference draws them from
torch's global generator seeded with `--seed`, ours from a generator seeded with the same
value, so the picks can be compared one to one in both regimes.

(a) "exact": N = 2,000, T = 20, C = 8, batch 10 (8^4 <= 10,000 < 8^5: picks 1-5 exact, 6-10
    sampled) and batch 5 (all exact); median of --repeats runs each, picks compared.
(b) "sampled": N = 20,000, batch 100 for ours; ours and the reference side by side at
    --sampled-ref-batch (10: 5 exact, 5 sampled picks; the reference's batch of 100 would
    take most of an hour on 2 cores). Each row runs once in its own process; peak memory is
    the RSS high-water mark (VmHWM, reset through /proc/self/clear_refs) minus RSS before.

(c) "per pick" (`--per-pick`): seconds per pick at N = 500 and 2,000 (T = 20, C = 8, 10,000
    configurations): an exact pick is t(5) / 5, a sampled pick (t(10) - t(5)) / 5, medians of
    --repeats. `--before PATH` times another copy of estimators/batchbald.py (e.g. the previous
    commit's, `git show HEAD~1:estimators/batchbald.py > /tmp/before.py`) interleaved with
    ours, and checks both pick the same batch.

(d) "growth" (`--growth`): why a sampled pick costs more the longer the batch. One greedy
    run of `--growth-batch` picks at N = `--growth-n`, timing per pick the redraw of the
    configurations (`sampled_log_joint`) and the entropy pass over the candidates
    (`entropy_given_batch`), with U, the number of distinct configurations that pass works on.

The reference's chunking helper (toma) calls gc.collect() twice per pick; `ref-nogc` is the
reference with that call patched out (the same arithmetic), to show what the gap is made of.

    .venv/bin/python benchmarks/batchbald.py [--threads N] [--repeats 3] [--skip-sampled]
    python benchmarks/batchbald.py --per-pick [--before /tmp/before.py] [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from flexsample.estimators.batchbald import CPU_THREADS, batchbald_batch


def draws(n: int, t: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs (N, T, C) for the reference, probs (T, N, C) for ours), float32."""
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(n, t, c, generator=g) + 2 * torch.randn(n, 1, c, generator=g)
    log_probs = torch.log_softmax(logits, -1)
    return log_probs, log_probs.exp().permute(1, 0, 2).contiguous()


def run_ours(probs: torch.Tensor, k: int, samples: int, seed: int) -> list[int]:
    return batchbald_batch(probs, k, samples, seed=seed)[0].tolist()


def run_ref(log_probs: torch.Tensor, k: int, samples: int, seed: int, gc: bool = True) -> list[int]:
    import toma
    import toma.torch_cuda_memory as tcm
    import tqdm
    from batchbald_redux import batchbald, joint_entropy
    from batchbald_redux.batchbald import get_batchbald_batch

    toma.gc_cuda = tcm.gc_cuda if gc else (lambda: None)
    for module in (batchbald, joint_entropy):  # no progress bars
        module.tqdm = functools.partial(tqdm.tqdm, disable=True)
    torch.manual_seed(seed)
    dtype = None if log_probs.dtype == torch.float32 else log_probs.dtype  # None: float32
    return list(get_batchbald_batch(log_probs, k, samples, dtype=dtype, device="cpu").indices)


def per_pick(args: argparse.Namespace) -> list[dict]:
    """(c): seconds per exact and per sampled pick, ours and optionally `--before`."""
    impls = {"ours": batchbald_batch}
    if args.before:
        import types

        with open(args.before, encoding="utf-8") as fh:  # without its registration
            src = fh.read().replace('@register_estimator("batchbald")', "")
        mod = types.ModuleType("flexsample.estimators.before_batchbald")
        mod.__package__ = "flexsample.estimators"  # its relative imports resolve
        exec(compile(src, args.before, "exec"), mod.__dict__)
        impls = {"before": mod.batchbald_batch, "ours": batchbald_batch}
    rows = []
    print(
        f"\n(c) per pick: T={args.t} C={args.c} samples={args.samples}, median of "
        f"{args.repeats}, torch threads {args.threads} (ours pins {CPU_THREADS} on a CPU)"
    )
    print(f"{'N':>5} {'side':>7} {'exact s/pick':>12} {'sampled s/pick':>14}  same picks")
    for n in args.per_pick_n:
        _, probs = draws(n, args.t, args.c, args.seed)
        times = {(side, k): [] for side in impls for k in (5, 10)}
        picks = {}
        for _ in range(args.repeats):
            for k in (5, 10):
                for side, fn in impls.items():
                    t0 = time.perf_counter()
                    picks[side] = fn(probs, k, args.samples, seed=args.seed)[0].tolist()
                    times[side, k].append(time.perf_counter() - t0)
        for side in impls:
            t5, t10 = (statistics.median(times[side, k]) for k in (5, 10))
            same = "-" if side == "ours" else str(picks[side] == picks["ours"])
            print(f"{n:>5} {side:>7} {t5 / 5:>12.3f} {(t10 - t5) / 5:>14.3f}  {same}", flush=True)
            rows.append(
                {
                    "case": "c",
                    "n": n,
                    "side": side,
                    "exact_s_per_pick": t5 / 5,
                    "sampled_s_per_pick": (t10 - t5) / 5,
                    "t5": times[side, 5],
                    "t10": times[side, 10],
                    "picks": picks[side],
                }
            )
    return rows


def growth(args: argparse.Namespace) -> list[dict]:
    """(d): per pick, the seconds of the redraw and of the entropy pass, and U."""
    import flexsample.estimators.batchbald as bb

    _, probs = draws(args.growth_n, args.t, args.c, args.seed)
    spent = {"redraw": 0.0, "entropy": 0.0}
    sizes: list[int] = []
    original = {"redraw": bb.sampled_log_joint, "entropy": bb.entropy_given_batch}

    def timing(name: str):
        def call(*a, **kw):
            t0 = time.perf_counter()
            out = original[name](*a, **kw)
            spent[name] += time.perf_counter() - t0
            if name == "redraw":
                sizes.append(int(out[0].shape[0]))
            return out

        return call

    rows: list[dict] = []
    bb.sampled_log_joint, bb.entropy_given_batch = timing("redraw"), timing("entropy")
    try:
        # each mark is its own greedy run from the start; the picks are deterministic, so the
        # difference of two runs is the cost of the picks between their lengths
        marks = sorted({m for m in args.growth_marks if m <= args.growth_batch})
        last = {"redraw": 0.0, "entropy": 0.0, "wall": 0.0, "k": 0}
        for k in marks:
            spent["redraw"] = spent["entropy"] = 0.0
            sizes.clear()
            t0 = time.perf_counter()
            _, mi = batchbald_batch(probs, k, args.samples, seed=args.seed)
            wall = time.perf_counter() - t0
            dk = k - last["k"]
            row = {
                "case": "d",
                "n": args.growth_n,
                "picks": k,
                "wall_s": wall,
                "s_per_pick_since_previous": (wall - last["wall"]) / dk,
                "redraw_s_per_pick_since_previous": (spent["redraw"] - last["redraw"]) / dk,
                "entropy_s_per_pick_since_previous": (spent["entropy"] - last["entropy"]) / dk,
                "distinct_configurations_last_pick": sizes[-1] if sizes else None,
                "information_nats": float(mi[-1]),
                "log_t": math.log(args.t),
            }
            rows.append(row)
            print(
                f"{k:>5} {wall:>8.2f} {row['s_per_pick_since_previous']:>10.3f} "
                f"{row['redraw_s_per_pick_since_previous']:>10.3f} "
                f"{row['entropy_s_per_pick_since_previous']:>10.3f} "
                f"{row['distinct_configurations_last_pick'] or '-':>8} {mi[-1]:>7.3f}",
                flush=True,
            )
            last = {"redraw": spent["redraw"], "entropy": spent["entropy"], "wall": wall, "k": k}
    finally:
        bb.sampled_log_joint, bb.entropy_given_batch = original["redraw"], original["entropy"]
    return rows


def timed(fn, repeats: int) -> tuple[float, list[int]]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _status(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def worker(args: argparse.Namespace) -> None:
    """One side of (b) in a fresh process: time and peak-RSS increase over the call."""
    log_probs, probs = draws(args.n, args.t, args.c, args.seed)
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    before = _status("VmRSS")
    t0 = time.perf_counter()
    if args.worker == "ours":
        picks = run_ours(probs, args.batch, args.samples, args.seed)
    else:
        picks = run_ref(log_probs, args.batch, args.samples, args.seed, gc=args.worker == "ref")
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mib": (peak - before) / 2**20,
                "hwm_reset": reset,
                "picks": picks,
            }
        )
    )


def conditions(threads: int) -> dict:
    with open("/proc/loadavg", encoding="ascii") as fh:
        load = " ".join(fh.read().split()[:3])
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo", encoding="ascii")
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "load": load,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (all cores)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side in (a); median reported")
    ap.add_argument("--t", type=int, default=20, help="MC draws T")
    ap.add_argument("--c", type=int, default=8, help="classes C")
    ap.add_argument("--samples", type=int, default=10_000, help="joint configurations (both)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exact-n", type=int, default=2_000)
    ap.add_argument("--exact-batch", type=int, default=10)
    ap.add_argument("--sampled-n", type=int, default=20_000)
    ap.add_argument("--sampled-batch", type=int, default=100)
    ap.add_argument(
        "--sampled-ref-batch",
        type=int,
        default=10,
        help="(b): batch for the reference and ours side by side (the reference's "
        "full batch takes far too long on a small CPU)",
    )
    ap.add_argument("--skip-sampled", action="store_true", help="only (a)")
    ap.add_argument("--skip-exact", action="store_true", help="only (b)")
    ap.add_argument(
        "--skip-ref-gc",
        action="store_true",
        help="(a) without the reference as shipped (its gc.collect calls are slow)",
    )
    ap.add_argument("--skip-sampled-ref", action="store_true", help="(b) without the reference")
    ap.add_argument("--per-pick", action="store_true", help="only (c): seconds per pick")
    ap.add_argument(
        "--per-pick-n",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[500, 2000],
        help="(c): candidate counts, comma-separated",
    )
    ap.add_argument("--before", help="(c): another batchbald.py to time beside ours")
    ap.add_argument("--growth", action="store_true", help="only (d): cost of a pick vs batch")
    ap.add_argument("--growth-n", type=int, default=2_000, help="(d): candidates")
    ap.add_argument("--growth-batch", type=int, default=100, help="(d): the longest batch")
    ap.add_argument(
        "--growth-marks",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[5, 10, 20, 40, 70, 100],
        help="(d): batch lengths timed (each a separate greedy run)",
    )
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--worker", choices=["ours", "ref", "ref-nogc"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        worker(args)
        return

    cond = conditions(args.threads)
    print("machine:", json.dumps(cond))
    rows = []
    if args.per_pick:
        rows = per_pick(args)
        args.skip_exact = args.skip_sampled = True
    if args.growth:
        print(
            f"\n(d) N={args.growth_n} T={args.t} C={args.c} samples={args.samples}; per pick "
            "since the previous row: all, redraw, entropy pass; U at the last pick; the batch's "
            "information I(y_batch; w) after it"
        )
        print(
            f"{'picks':>5} {'wall s':>8} {'s/pick':>10} {'redraw':>10} {'entropy':>10} "
            f"{'U':>8} {'I nats':>7}  (log T = {math.log(args.t):.3f})"
        )
        rows += growth(args)
        args.skip_exact = args.skip_sampled = True
    log_probs, probs = draws(args.exact_n, args.t, args.c, args.seed)
    if not args.skip_exact:
        print(
            f"\n(a) N={args.exact_n} T={args.t} C={args.c} samples={args.samples}, "
            f"median of {args.repeats}"
        )
        print(f"{'batch':>5} {'side':>9} {'seconds':>9} {'ref/ours':>8}  same picks as ours")
    for k in [] if args.skip_exact else sorted({args.exact_batch, 5}, reverse=True):
        sides = {
            "ours": lambda k=k: run_ours(probs, k, args.samples, args.seed),
            "ref": lambda k=k: run_ref(log_probs, k, args.samples, args.seed, True),
            "ref-nogc": lambda k=k: run_ref(log_probs, k, args.samples, args.seed, False),
        }
        if args.skip_ref_gc:
            del sides["ref"]
        times: dict[str, list[float]] = {side: [] for side in sides}
        picks = {}
        for _ in range(args.repeats):  # interleaved: every side sees the same machine load
            for side, fn in sides.items():
                t0 = time.perf_counter()
                picks[side] = fn()
                times[side].append(time.perf_counter() - t0)
        t_ours = statistics.median(times["ours"])
        for side in sides:
            med = statistics.median(times[side])
            same = "-" if side == "ours" else str(picks[side] == picks["ours"])
            print(f"{k:>5} {side:>9} {med:>9.3f} {med / t_ours:>8.2f}  {same}", flush=True)
            rows.append(
                {
                    "case": "a",
                    "batch": k,
                    "side": side,
                    "seconds": med,
                    "all_seconds": times[side],
                    "ratio": med / t_ours,
                    "same_picks": picks[side] == picks["ours"],
                    "picks": picks[side],
                }
            )
        # the reference in float64 on the same draws, once: the float32 sides may part on a
        # near-tie within float32 rounding (ours re-checks near-ties in float64)
        t0 = time.perf_counter()
        p64 = run_ref(log_probs.double(), k, args.samples, args.seed, False)
        t64 = time.perf_counter() - t0
        print(
            f"{k:>5} {'ref-f64':>9} {t64:>9.3f} {t64 / t_ours:>8.2f}  {p64 == picks['ours']}"
            "  (one run)",
            flush=True,
        )
        rows.append(
            {
                "case": "a",
                "batch": k,
                "side": "ref-f64",
                "seconds": t64,
                "same_picks": p64 == picks["ours"],
                "picks": p64,
            }
        )

    if not args.skip_sampled:
        kb, kr = args.sampled_batch, args.sampled_ref_batch
        print(
            f"\n(b) N={args.sampled_n} T={args.t} C={args.c} samples={args.samples}; one run "
            f"per row, each in its own process (peak: RSS high-water mark minus RSS before)"
        )
        print(f"{'side':>9} {'batch':>5} {'seconds':>9} {'peak MiB':>9}  same picks as ours")
        runs = [("ours", kb)] + ([] if args.skip_sampled_ref else [("ours", kr), ("ref", kr)])
        runs = list(dict.fromkeys(runs))  # once each
        got = {}
        for side, k in runs:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                side,
                "--n",
                str(args.sampled_n),
                "--batch",
                str(k),
                "--t",
                str(args.t),
                "--c",
                str(args.c),
                "--samples",
                str(args.samples),
                "--seed",
                str(args.seed),
                "--threads",
                str(args.threads),
            ]
            res = json.loads(
                subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[
                    -1
                ]
            )
            got[side, k] = res
            ours = got["ours", kb]["picks"][:k]
            same = "-" if side == "ours" else str(res["picks"] == ours)
            print(
                f"{side:>9} {k:>5} {res['seconds']:>9.1f} {res['peak_mib']:>9.1f}  {same}",
                flush=True,
            )
            rows.append({"case": "b", "side": side, "batch": k, **res})
        if ("ref", kr) in got:
            ratio = got["ref", kr]["seconds"] / got["ours", kr]["seconds"]
            guess = got["ours", kb]["seconds"] * ratio
            print(
                f"ref/ours at batch {kr}: {ratio:.2f}"
                + (
                    ""
                    if kb == kr
                    else f"; the reference at batch {kb} was not run "
                    f"(rough estimate at that ratio: {guess / 60:.0f} min)"
                )
            )

    cond["load_after"] = conditions(args.threads)["load"]
    print("\nload average after:", cond["load_after"])
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"conditions": cond, "args": vars(args), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
