"""Ray's scheduling cost per bench cell, apart from the cell's own work.

    python benchmarks/ray_overhead.py [--cells 100]

The same trivial cells (a configuration that fails validation at once, so a cell does almost
nothing) run inline through `cell_entry`, then through `RayLauncher` (submit -> poll) on a
local Ray runtime whose workers are already warm (their imports paid by four cells first).
Reports the median submit-to-outcome latency against the inline median, and the time per cell
when all are submitted at once. The runtime's start-up is reported apart: a bench pays it once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from flexsample.workflows.bench import cell_entry
from flexsample.workflows.launchers import CellTask
from flexsample.workflows.launchers.ray import RayLauncher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=100)
    n = ap.parse_args().cells
    tmp = tempfile.mkdtemp(prefix="fs-ray-overhead-")
    tasks = [
        CellTask(
            config={"rounds": -1},
            out=f"{tmp}/c{i}",
            method="m",
            baseline=False,
            key=str(i),
            label=f"c{i}",
        )
        for i in range(n)
    ]
    t0 = time.perf_counter()
    launcher = RayLauncher(num_cpus=2)
    launcher.start(tasks)
    start_s = time.perf_counter() - t0

    def wait(job):
        while (outcome := launcher.poll(job)) is None:
            time.sleep(0.001)
        return outcome

    try:
        for job in launcher.submit(tasks[:4]):  # warm workers
            wait(job)
        inline, latency = [], []
        for task in tasks:
            t = time.perf_counter()
            assert not cell_entry(task).ok
            inline.append(time.perf_counter() - t)
        for task in tasks:
            t = time.perf_counter()
            assert not wait(launcher.submit([task])[0]).ok
            latency.append(time.perf_counter() - t)
        t = time.perf_counter()
        for job in launcher.submit(tasks):
            wait(job)
        batch = time.perf_counter() - t
    finally:
        launcher.close()
    mi, ml = statistics.median(inline), statistics.median(latency)
    p90 = sorted(latency)[int(0.9 * n)]
    print(f"local Ray runtime start: {start_s:.1f} s")
    print(
        f"{n} cells: inline median {mi * 1e3:.1f} ms; Ray submit->outcome median "
        f"{ml * 1e3:.1f} ms (p90 {p90 * 1e3:.1f} ms); overhead per cell {(ml - mi) * 1e3:.1f} ms"
    )
    print(f"all {n} submitted at once on 2 CPUs: {batch / n * 1e3:.1f} ms per cell")
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
