"""The density estimator's kNN search at scale: wall time and memory per pool size at 512 dims.

For each pool size N (clustered, non-negative float32 rows, L2-normalised as `knn_density`
does) and each index kind, the same build + search that `knn_search` runs for k + 1 = 11:

* flat  -- faiss exact IndexFlatIP (`ivf_threshold` >= N);
* ivf   -- faiss IVF (`ivf_threshold` < N): nlist = 4 sqrt(N), nprobe = nlist / 16;
           recall@11 against exact search on a sample of queries is measured;
* torch -- the exact chunked matmul + top-k of `_torch_search` on `--device`.

`search_plan` decides where each kind runs: with `--device cuda` and a CPU-only faiss, flat and
ivf both become the torch path on the GPU (reported in the `path` column, run once).
Every row of the pool is a query, as when all of it is scored; `--queries Q` searches a seeded
sample of Q rows instead and extrapolates the search time linearly to N queries (the
`search_all_s` column is then marked `extrapolated`). Memory: the process's resident-set
growth while the index is built (`index_mb`, what it keeps) and its peak during build + search
over the baseline (`peak_mb`, via /proc/self/clear_refs); on CUDA, the device memory in use
after the build (`gpu_mb`, from cudaMemGetInfo) and torch's peak allocation (`torch_peak_mb`);
the printed gpu_MB column is torch's peak (the exact torch path), else the faiss index's share.
/proc/loadavg is read after each row (2 shared cores here: see it with every figure).

    python benchmarks/density_scale.py --sizes 100000,250000 --queries 20000 --json out.json
    python benchmarks/density_scale.py --device cuda --sizes 250000,1000000 --json gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from flexsample.estimators.density import (
    _torch_search,
    build_index,
    faiss_gpu_count,
    search_plan,
)


def clustered(n: int, dim: int, seed: int = 0, centers: int = 200, chunk: int = 65_536):
    """Unit rows of non-negative clustered features, made in float32 chunks (no float64 copy)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        block = c[rng.integers(0, centers, m)]
        block += rng.standard_normal((m, dim), dtype=np.float32)
        np.maximum(block, 0, out=out[lo : lo + m])
    faiss.normalize_L2(out)
    return out


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    except OSError:
        pass


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def gpu_used_mb(dev: torch.device) -> float | None:
    if dev.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(dev)
    return (total - free) / 2**20


def recall(got: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(got, exact, strict=True)]))


def measure(
    db: np.ndarray,
    queries: np.ndarray,
    kind: str,
    k: int,
    dev: torch.device,
    exact_ids: np.ndarray | None,
) -> dict:
    """One build + search of `kind` over `db`; times, memory, and recall on the first rows."""
    n = len(db)
    threshold = n if kind == "flat" else 0
    where = "torch" if kind == "torch" else search_plan(n, dev, threshold)[1]
    path = f"exact/torch-{dev.type}" if where == "torch" else f"{kind}/faiss-{where}"
    row: dict = {"n": n, "kind": kind, "path": path}
    gc_base = gpu_used_mb(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    reset_peak()
    base = rss_mb()
    t0 = time.perf_counter()
    if where == "torch":
        index = None
        row["build_s"] = 0.0  # the copy to the device is inside the search
    else:
        gpu = None if where == "cpu" else dev.index or 0
        index = build_index(db, threshold, gpu, shard=where == "gpus")
        sync(dev)
        row["build_s"] = time.perf_counter() - t0
        if kind == "ivf":
            ivf = faiss.extract_index_ivf(index) if where == "cpu" else None
            row["nlist"], row["nprobe"] = (ivf.nlist, ivf.nprobe) if ivf else (None, None)
    row["index_mb"] = rss_mb() - base
    row["gpu_mb"] = None if gc_base is None else gpu_used_mb(dev) - gc_base
    t1 = time.perf_counter()
    if index is None:
        _, ids = _torch_search(db, queries, k, dev)
    else:
        _, ids = index.search(queries, k)
    sync(dev)
    row["search_s"] = time.perf_counter() - t1
    row["peak_mb"] = rss_mb("VmHWM") - base
    row["torch_peak_mb"] = (
        torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    )
    row["queries"] = len(queries)
    row["search_all_s"] = row["search_s"] * n / len(queries)
    row["extrapolated"] = len(queries) < n
    row["total_s"] = row["build_s"] + row["search_all_s"]
    if exact_ids is not None and where != "torch" and kind == "ivf":
        row["recall"] = recall(ids[: len(exact_ids)], exact_ids)
    row["loadavg"] = loadavg()
    del index
    return row


def save(path: str | None, out: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(out, indent=1))


def line(row: dict) -> str:
    rec, gmb = row.get("recall"), row.get("torch_peak_mb")
    star = "*" if row["extrapolated"] else " "
    if not gmb:  # a faiss GPU index: memory taken from the device after the build
        gmb = row["gpu_mb"]
    gmb = "-" if gmb is None else f"{gmb:.0f}"
    return (
        f"{row['n']:>9} {row['kind']:5} {row['path']:16} {row['build_s']:8.2f}"
        f" {row['search_s']:8.2f} {row['queries']:>8} {row['search_all_s']:9.1f}{star}"
        f"{row['index_mb']:8.0f} {row['peak_mb']:8.0f} {gmb:>7}"
        f" {'-' if rec is None else f'{rec:.4f}':>6}  {row['loadavg']}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,250000,1000000", help="comma-separated pool sizes N")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10, help="neighbours (the search asks for k + 1)")
    ap.add_argument("--kinds", default="flat,ivf,torch")
    ap.add_argument(
        "--flat-max", type=int, default=0, help="skip faiss flat above this N (0: never skip)"
    )
    ap.add_argument(
        "--queries",
        type=int,
        default=0,
        help="search a seeded sample of this many rows and extrapolate (0: all N)",
    )
    ap.add_argument(
        "--recall-queries",
        type=int,
        default=1000,
        help="IVF recall against exact search on this many of the queries",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="faiss and torch CPU threads")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        dev = torch.device("cuda", dev.index or 0)
        _torch_search(np.eye(8, dtype=np.float32), np.eye(8, dtype=np.float32), 2, dev)  # warm
    k = args.k + 1
    kinds = [s for s in args.kinds.split(",") if s]
    info = {
        "device": str(dev),
        "dim": args.dim,
        "k_search": k,
        "faiss": faiss.__version__,
        "faiss_gpus": faiss_gpu_count(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "loadavg_start": loadavg(),
    }
    print(json.dumps(info))
    rows = []
    head = (
        f"{'N':>9} {'kind':5} {'path':16} {'build_s':>8} {'search_s':>8} {'q':>8} "
        f"{'all_N_s':>9} {'index_MB':>8} {'peak_MB':>8} {'gpu_MB':>7} {'recall':>6}  load"
    )
    print(head)
    for n in (int(s) for s in args.sizes.split(",")):
        t = time.perf_counter()
        db = clustered(n, args.dim)
        gen_s = time.perf_counter() - t
        rng = np.random.default_rng(1)
        q = args.queries if 0 < args.queries < n else n
        qrows = np.sort(rng.choice(n, q, replace=False)) if q < n else np.arange(n)
        queries = np.ascontiguousarray(db[qrows])
        exact = None
        if "ivf" in kinds:  # exact reference for recall: torch on the CPU (faster than faiss)
            r = min(args.recall_queries, q)
            exact = _torch_search(db, queries[:r], k, torch.device("cpu"))[1]
        done = set()
        for kind in kinds:
            if kind == "flat" and args.flat_max and n > args.flat_max:
                continue
            plan = "torch" if kind == "torch" else search_plan(n, dev, n if kind == "flat" else 0)
            if plan in done or (plan == ("flat", "torch") and "torch" in kinds):
                continue  # same path as another kind (CUDA with a CPU-only faiss)
            done.add(plan)
            row = measure(db, queries, kind, k, dev, exact)
            row["generate_s"] = gen_s
            rows.append(row)
            print(line(row), flush=True)
            save(args.json, {"info": info, "rows": rows, "partial": True})  # survives a kill
        del db, queries
    print("* search time for all N queries extrapolated linearly from the timed sample")
    # exact search of all N queries against N rows costs N^2 d: scale it to N = 1M
    to_1m = {
        f"{r['path']}@{r['n']}": round(r["search_all_s"] * (1e6 / r["n"]) ** 2, 1)
        for r in rows
        if r["kind"] != "ivf" and r["n"] < 10**6
    }
    if to_1m:
        print("exact all-queries search extrapolated to N = 1M (x (1M/N)^2), s:", json.dumps(to_1m))
    out = {
        "info": info,
        "rows": rows,
        "exact_search_1m_extrapolated_s": to_1m,
        "loadavg_end": loadavg(),
    }
    save(args.json, out)


if __name__ == "__main__":
    main()
