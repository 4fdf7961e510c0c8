"""A bench grid: cells (estimators x policies x datasets x ratios x budgets x seeds, plus named
long-tail baselines), run in this process or in worker processes, summarised as bench.csv,
summary.md and summary.png.

What makes the numbers trustworthy:

- every cell is keyed on a hash of its resolved configuration (`RunConfig.model_dump()`, sorted
  JSON) and the flexsample version; the hash is part of the cell's folder name, so a request with
  other flags (or another flexsample version) never reuses, nor overwrites, a cell of another
  configuration: it runs into a folder of its own;
- a cell is finished only once its `cell.json` says so, with that hash; it is written last, after
  `results.json`, so a cell killed or failed half-way is rerun, never reported;
- a cell is recognised by its own record: its folder must be the one its cell.json names
  (`seed<N>-<hash>`), so a copied or renamed cell folder is no extra seed; and cell.json keeps a
  sha256 digest of results.json's content, so a results.json edited after the cell finished is
  not taken for a result. Both are reported (one line naming the folder) and left out;
- bench.csv and the summary cover every finished cell under --out (this grid's and those earlier
  grids left there), with the flags that tell two configurations of one method apart as columns;
- worker processes die with the bench process, and Ctrl-C stops the grid at once;
- one bench at a time per --out: a bench holds the folder's lock (`BenchLock`) from before its
  first write to its summary, so a second bench on the same folder is refused with one line
  naming the running one (its pid and host) instead of computing every cell again and
  overwriting the first one's finished cells.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import socket
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from flexsample._version import __version__
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.faults import fault_point
from flexsample.engine.registry import LAUNCHERS

from .components import KINDS, option_fields
from .config import Layer, RunConfig, build_config, stable_hash, validate_config
from .launchers import CellTask, Launcher, Outcome, build_launcher, check_launcher
from .outputs import RESULTS, write_json
from .rundir import pid_alive
from .tracking import build_trackers, check_trackers

BASELINES: dict[str, dict[str, Any]] = {
    "ce": {"loss": "ce"},
    "rs": {"sampler": "class-balanced"},
    "rw": {"loss": "grw", "grw_exponent": 1.0},
    "cb-focal": {"loss": "cb-focal"},
    "ldam-drw": {"loss": "ldam"},
    "balanced-softmax": {"loss": "balanced-softmax"},
    "logit-adjust": {"logit_adjust": 1.0},
    "mixup": {"mixup": 1.0},
    # decoupling (Kang et al. 2020): the ce full-set run, then its head re-balanced
    "crt": {"loss": "ce", "decouple": "crt"},
    "lws": {"loss": "ce", "decouple": "lws"},
    "tau-norm": {"loss": "ce", "decouple": "tau-norm"},
}
BASELINE_BASE = {
    "policy": "full",
    "estimator": "random",
    "anchors": "random",
    "allocation": "proportional",
    "loss": "ce",
    "sampler": "instance",
    "mixup": 0.0,
    "logit_adjust": 0.0,
    "decouple": "none",  # `bench --decouple X` decouples the curriculum cells, not every baseline
}

CELL_FILE = "cell.json"  # written last: a cell is finished once it says so
CELL_FORMAT = 2  # 2: cell.json carries `results_sha256`, the digest of results.json
DIGEST_KEY = "results_sha256"
HASH_CHARS = 10  # of the config hash in a cell's folder name


def config_hash(config: RunConfig | dict[str, Any], version: str = __version__) -> str:
    """A cell's key: sha256 of its resolved configuration (sorted JSON) and flexsample version."""
    values = config.model_dump(mode="json") if isinstance(config, RunConfig) else config
    return stable_hash({"config": values, "flexsample_version": version})


@dataclass
class Cell:
    """One requested run of the grid; `key` is its config hash, also in its folder name."""

    method: str
    baseline: bool
    config: RunConfig
    out: Path
    key: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.key:
            self.key = config_hash(self.config)

    @property
    def label(self) -> str:
        return f"{self.method} seed {self.config.seed} ({self.out})"


@dataclass
class CellRecord:
    """A finished cell as stored in its folder: what ran, under which key, and its results."""

    method: str
    baseline: bool
    config: dict[str, Any]
    key: str
    version: str
    results: dict[str, Any]
    out: Path
    verified: bool = True  # False: recorded before results digests (CELL_FORMAT 1)

    def flags(self) -> dict[str, Any]:
        return {**self.config, "flexsample_version": self.version}


def plan_cells(
    base: RunConfig,
    out: Path,
    estimators: list[str] | None,
    policies: list[str] | None,
    datasets: list[str] | None,
    ratios: list[float] | None,
    seeds: list[int] | None,
    baselines: list[str] | None,
    budgets: list[str] | None = None,
    recipe_bases: dict[str, RunConfig] | None = None,
) -> list[Cell]:
    """The requested cells, each in `<out>/<dataset>-r<ratio>[-<budget>]/<method>/seed<N>-<hash>`
    (the budget in the folder name only where it is not the default, epochs: `-samples`).

    `budgets` sweeps `--budget`: every cell, the baselines too, once per budget (a full-set
    baseline trains the same samples under both, so its samples cell repeats its epochs cell;
    it is kept so that each budget's table has its reference)."""
    unknown = [b for b in baselines or [] if b not in BASELINES]
    if unknown:
        raise FlexsampleError(f"unknown baseline '{unknown[0]}'; accepted: {', '.join(BASELINES)}")
    accepted = get_args(RunConfig.model_fields["budget"].annotation)
    wrong = [b for b in budgets or [] if b not in accepted]
    if wrong:
        raise FlexsampleError(
            f"unknown budget '{wrong[0]}' in --budgets; accepted: {', '.join(accepted)}"
        )
    cells: list[Cell] = []

    def add(method: str, baseline: bool, cfg: RunConfig, folder: Path) -> None:
        key = config_hash(cfg)
        cell = Cell(method, baseline, cfg, folder / f"seed{cfg.seed}-{key[:HASH_CHARS]}", key)
        if all(c.out != cell.out for c in cells):  # a name given twice is one cell
            cells.append(cell)

    base_ratio = base.option("dataset", "imbalance_ratio")
    for ds in datasets or [base.dataset]:
        for ratio in ratios or [base_ratio]:
            for budget in budgets or [base.budget]:
                tag = f"-r{ratio:g}" if ratio is not None else ""
                group = out / (f"{ds}{tag}" + ("" if budget == "epochs" else f"-{budget}"))
                for seed in seeds or [base.seed]:
                    common: dict[str, Any] = {"dataset": ds, "budget": budget, "seed": seed}
                    if ratios:
                        common["imbalance_ratio"] = ratio
                    if not recipe_bases or estimators or policies or baselines:
                        plan_seed(add, base, group, common, estimators, policies, baselines)
                    for name, rbase in (recipe_bases or {}).items():
                        cfg = build_config(
                            [
                                (
                                    f"the bench's base config with --recipe {name}",
                                    rbase.model_dump(),
                                ),
                                carried(rbase, common),
                            ]
                        )
                        add(f"recipe:{name}", False, cfg, group / f"recipe-{name}")
    return cells


def plan_seed(
    add: Callable[[str, bool, RunConfig, Path], None],
    base: RunConfig,
    group: Path,
    common: dict[str, Any],
    estimators: list[str] | None,
    policies: list[str] | None,
    baselines: list[str] | None,
) -> None:
    """One (dataset, ratio, budget, seed) of the grid: its curriculum cells and baselines."""
    if estimators is not None or policies is not None or not baselines:
        for est in estimators or [base.estimator]:
            for pol in policies or [base.policy]:
                grid = {**common, "estimator": est, "policy": pol}
                cfg = build_config(
                    [("the bench's base config", base.model_dump()), carried(base, grid)]
                )
                method = f"{est}/{pol}"
                add(method, False, cfg, group / method.replace("/", "-"))
    for name in baselines or []:
        grid = {**BASELINE_BASE, **BASELINES[name], **common}
        cfg = build_config([("the bench's base config", base.model_dump()), carried(base, grid)])
        add(f"baseline:{name}", True, cfg, group / f"baseline-{name}")


def carried(base: RunConfig, grid: dict[str, Any]) -> Layer:
    """The grid's layer over the base config: where the grid chooses another component of a
    kind, the base's values of the options the new one also declares come along (the base's
    --data-seed for each swept dataset, --mc-samples for each MC estimator)."""
    layer = dict(grid)
    for kind in KINDS:
        name = grid.get(kind)
        if name is None or name == getattr(base, kind):
            continue
        takes = option_fields(kind, name)
        mine = {k: v for k, v in base.option_section(kind).items() if k in takes and k not in grid}
        if mine:
            layer[f"{kind}_options"] = mine
    return ("the bench grid", layer)


# --- one cell --------------------------------------------------------------------------------


def run_cell(
    config: dict[str, Any],
    out: str,
    threads: int,
    method: str = "",
    baseline: bool = False,
    info: dict[str, Any] | None = None,
    trackers: Callable[[RunConfig, Path], Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """One cell in this process (or a worker process): returns results.json plus wall time.
    `trackers(cfg, folder)` gives the experiment-tracker callbacks of the cell, if any.

    cell.json (config, its hash, version, wall time, where it ran) is written last, once
    results.json is complete: a cell killed or failed before it is never taken for a result.
    """
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    cfg = validate_config(config, "the bench grid")
    path = Path(out)
    doc = {
        "format": CELL_FORMAT,
        "status": "finished",
        "method": method,
        "baseline": baseline,
        "config_hash": config_hash(cfg),
        "flexsample_version": __version__,
        "config": cfg.model_dump(mode="json"),
    }
    (path / CELL_FILE).unlink(missing_ok=True)  # a stale or damaged record, or a failure
    t0 = time.perf_counter()
    results = _run_into(cfg, path, trackers(cfg, path) if trackers else ())
    fault_point("bench-cell")
    wall = time.perf_counter() - t0
    ran = {"pid": os.getpid(), "threads": torch.get_num_threads(), **(info or {})}
    saved = json.loads((path / RESULTS).read_text(encoding="utf-8"))  # as written, to the byte
    doc[DIGEST_KEY] = results_digest(saved)
    write_json(path / CELL_FILE, {**doc, "wall_s": wall, **ran})
    return {**results, "wall_s": wall}


def cell_entry(task: CellTask) -> Outcome:
    """One attempt at one cell, wherever a launcher put it (this process, a worker process, a
    Ray task, a Slurm array task). Every error, a SystemExit from a plugin too, becomes an
    Outcome with one line; only an interrupt (KeyboardInterrupt, SIGTERM's Terminated)
    propagates."""
    os.environ.update(task.env)  # before CUDA starts: the cell's GPU
    where = socket.gethostname()
    gpu = task.env.get("CUDA_VISIBLE_DEVICES") or os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpu:
        where += f" GPU {gpu}"
    try:
        if task.check_file:
            _check_shared(task)
        info = {"host": socket.gethostname(), "gpu": gpu or None, "attempt": task.attempt}
        args = (task.config, task.out, task.threads, task.method, task.baseline, info)
        return Outcome(True, run_cell(*args, trackers=_cell_trackers(task)), where=where)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - recorded, the grid goes on
        line = _error_line(exc)
        detail = "".join(traceback.format_exception(exc))[-20_000:]
        user = isinstance(exc, FlexsampleError) or _is_environment(exc)
        return Outcome(False, error=line, user_error=user, where=where, detail=detail)


def _is_environment(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno is not None


def _error_line(exc: BaseException) -> str:
    """One line for a failure record: the message of a FlexsampleError, else type: message."""
    if isinstance(exc, FlexsampleError):
        text = str(exc)
    elif _is_environment(exc):
        cause = exc.strerror or str(exc)  # type: ignore[attr-defined]
        name = getattr(exc, "filename", None)
        text = f"{cause} ({name})" if name else cause
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())[:500]


def _check_shared(task: CellTask) -> None:
    """--out must be one folder that the driver and every worker see (a shared filesystem)."""
    try:
        token = Path(task.check_file).read_text(encoding="utf-8").strip()
    except OSError:
        token = ""
    if token != task.check_token:
        raise FlexsampleError(
            f"--out {Path(task.check_file).parent} is not the bench folder the driver wrote "
            f"(not visible from worker {socket.gethostname()}); --out must be on a filesystem "
            "shared by the driver and every worker"
        )


def _run_into(cfg: RunConfig, path: Path, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """The run itself, the one place the bench calls the run pipeline. A half cell left in
    `path` by a killed attempt is a flexsample run folder: --overwrite's rules replace it."""
    from .run import execute, prepare_out

    prepare_out(path, overwrite=True)
    return execute(cfg, path, overwrite=True, callbacks=callbacks).results


def _cell_trackers(task: CellTask) -> Callable[[RunConfig, Path], Sequence[Any]] | None:
    """The cell's experiment trackers: grouped by the bench (MLflow experiment, W&B group,
    a TensorBoard / CSV sub-folder of --log-dir), one tracker run per cell."""
    if not task.log_to:
        return None

    def make(cfg: RunConfig, folder: Path) -> Sequence[Any]:
        return build_trackers(
            list(task.log_to),
            run_dir=folder,
            log_dir=Path(task.log_dir) if task.log_dir else None,
            config=cfg.model_dump(mode="json"),
            run_name=f"{task.method.replace('/', '-')}-seed{cfg.seed}-{task.key[:HASH_CHARS]}",
            group=task.group or None,
        )

    return make


def results_digest(results: dict[str, Any]) -> str:
    """sha256 of results.json's canonical content (sorted keys, compact): a cell's record of
    what its run wrote; reformatting the file keeps it, changing a value does not."""
    text = json.dumps(results, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cell_folder_name(config: dict[str, Any], key: str) -> str:
    """The folder a cell of this configuration and key runs in (`plan_cells`)."""
    return f"seed{config.get('seed', 0)}-{key[:HASH_CHARS]}"


@dataclass
class RejectedCell:
    """A folder holding a finished cell.json that is not counted, and why (one line)."""

    out: Path
    reason: str

    def line(self, root: Path | None = None) -> str:
        where = self.out
        if root is not None:
            with contextlib.suppress(ValueError):
                where = self.out.relative_to(root)
        return f"{where}: not counted: {self.reason}"


def inspect_cell(path: Path) -> CellRecord | RejectedCell | None:
    """The finished cell stored in `path`; a RejectedCell when its folder holds a finished
    cell.json that cannot be trusted (edited, copied or renamed, results changed); None when it
    holds no finished cell (no or an unfinished cell.json, a failure record, unreadable)."""
    try:
        doc = json.loads((path / CELL_FILE).read_text(encoding="utf-8"))
        if doc.get("status") != "finished":
            return None
        config, version, key = doc["config"], doc["flexsample_version"], doc["config_hash"]
        fmt = int(doc.get("format", 1))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    try:
        own = key == config_hash(config, version)
    except (TypeError, ValueError):
        own = False
    if not own:
        return RejectedCell(
            path, "cell.json was edited (its configuration no longer matches its config hash)"
        )
    name = cell_folder_name(config, key)
    if path.name != name:
        return RejectedCell(
            path, f"a copied or renamed cell folder (its cell.json is the cell of folder {name})"
        )
    try:
        results = json.loads((path / RESULTS).read_text(encoding="utf-8"))
        results["test"]["balanced_accuracy"]  # noqa: B018 - a results.json that has a result
        wall = float(doc.get("wall_s", math.nan))
    except (OSError, ValueError, KeyError, TypeError):
        return RejectedCell(path, f"its {RESULTS} is missing or damaged")
    if fmt >= 2 and doc.get(DIGEST_KEY) != results_digest(results):
        return RejectedCell(
            path,
            f"{RESULTS} was changed after the cell finished (it does not match the sha256 "
            f"digest in {CELL_FILE})",
        )
    results["wall_s"] = wall
    method = str(doc.get("method") or f"{config.get('estimator')}/{config.get('policy')}")
    record = CellRecord(method, bool(doc.get("baseline")), config, key, version, results, path)
    record.verified = fmt >= 2
    return record


def read_cell(path: Path) -> CellRecord | None:
    """The finished cell stored in `path`, or None (not a cell, unfinished, edited, copied,
    damaged: `inspect_cell` says which)."""
    found = inspect_cell(path)
    return found if isinstance(found, CellRecord) else None


@dataclass
class FailedRecord:
    """A cell whose last attempt failed, as recorded in its folder's cell.json."""

    method: str
    baseline: bool
    config: dict[str, Any]
    key: str
    version: str
    error: str
    attempts: int
    out: Path
    user_error: bool = False
    where: str = ""


def write_failure(cell: Cell, outcome: Outcome, attempts: int) -> None:
    """Record a failed attempt in the cell's folder (cell.json, status failed): bench.csv
    reports it, and the next bench reruns it (only `finished` cells are skipped)."""
    cell.out.mkdir(parents=True, exist_ok=True)
    write_json(
        cell.out / CELL_FILE,
        {
            "format": CELL_FORMAT,
            "status": "failed",
            "method": cell.method,
            "baseline": cell.baseline,
            "config_hash": cell.key,
            "flexsample_version": __version__,
            "config": cell.config.model_dump(mode="json"),
            "error": outcome.error,
            "user_error": outcome.user_error,
            "attempts": attempts,
            "where": outcome.where,
            "traceback": outcome.detail,
        },
    )


def read_failure(path: Path) -> FailedRecord | None:
    """The failure recorded in `path`, or None (no cell.json, a finished cell, damaged)."""
    try:
        doc = json.loads((path / CELL_FILE).read_text(encoding="utf-8"))
        if doc.get("status") != "failed":
            return None
        config, version, key = doc["config"], doc["flexsample_version"], doc["config_hash"]
        return FailedRecord(
            str(doc.get("method") or ""),
            bool(doc.get("baseline")),
            config,
            key,
            version,
            str(doc.get("error") or "unknown error"),
            int(doc.get("attempts") or 1),
            path,
            bool(doc.get("user_error")),
            str(doc.get("where") or ""),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def collect_failed(out: Path) -> list[FailedRecord]:
    """Every cell under `out` whose last attempt failed."""
    records = (read_failure(p.parent) for p in sorted(out.rglob(CELL_FILE)))
    return [r for r in records if r is not None]


def finished(cell: Cell) -> dict[str, Any] | None:
    """The cell's results if it finished with exactly this configuration, else None."""
    record = read_cell(cell.out)
    return record.results if record is not None and record.key == cell.key else None


def collect_finished(out: Path) -> list[CellRecord]:
    """Every finished cell under `out`, whichever grid made it."""
    return collect_cells(out)[0]


def collect_cells(out: Path) -> tuple[list[CellRecord], list[RejectedCell]]:
    """Every finished cell under `out`, and the folders whose finished cell.json is not
    counted (`inspect_cell`)."""
    records: list[CellRecord] = []
    rejected: list[RejectedCell] = []
    for p in sorted(out.rglob(CELL_FILE)):
        found = inspect_cell(p.parent)
        if isinstance(found, CellRecord):
            records.append(found)
        elif isinstance(found, RejectedCell):
            rejected.append(found)
    return records, rejected


def unkeyed_runs(out: Path) -> list[Path]:
    """Run folders under `out` with a results.json but no finished cell.json: never reported
    (an older flexsample's cells, or a cell that died before it was marked finished). Folders
    whose cell.json is not counted (`inspect_cell`) are reported by the summary instead."""
    return [p.parent for p in sorted(out.rglob(RESULTS)) if inspect_cell(p.parent) is None]


# --- one bench per folder --------------------------------------------------------------------

BENCH_LOCK = ".flexsample-bench.lock"  # held by the bench that drives the folder
# flock not supported by the filesystem (some NFS or Lustre mounts): the holder record decides
_NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


class BenchLock:
    """One bench at a time per bench folder.

    Why a lock rather than sharing the cells between two benches: cells are whole runs, so two
    drivers would each need a claim per cell, a way to tell a claim of a live driver from one of
    a dead driver on another host, and agreement on retries and on who writes the summary; one
    driver per folder keeps the grid's bookkeeping (retries, failure records, Slurm's jobs.json,
    the summary) single-writer. The second bench is refused before it writes anything, with the
    running bench's pid and host; it may run once the first ends (it then reuses the finished
    cells).

    The lock is an exclusive `flock` on `<out>/.flexsample-bench.lock`, which the kernel drops
    when its holder dies (a killed bench never blocks the folder). The file also records the
    holder (pid, host). Where the filesystem has no `flock`, that record is the lock: a record
    of a process that is gone from this host is stale and taken over; one from another host is
    honoured, and the message names the file to delete if that bench no longer runs.
    """

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self.fd = fd  # None: the record alone (no flock on this filesystem)

    @staticmethod
    def _me() -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}

    @staticmethod
    def _holder(text: str) -> dict[str, Any]:
        try:
            doc = json.loads(text)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    @classmethod
    def _refuse(cls, out: Path, holder: dict[str, Any], stale_hint: bool = False) -> None:
        pid, host = holder.get("pid", "?"), holder.get("host", "?")
        hint = (
            f"; if it no longer runs, delete {out / BENCH_LOCK}"
            if stale_hint
            else "; wait for it to finish, stop it, or choose another --out"
        )
        raise FlexsampleError(
            f"bench folder {out} is in use by another flexsample bench (pid {pid} on {host})" + hint
        )

    @classmethod
    def acquire(cls, out: Path) -> BenchLock:
        """The folder's lock, or one FlexsampleError line naming the bench that holds it."""
        path = out / BENCH_LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise FlexsampleError(
                f"cannot lock bench folder {out}: {exc.strerror or exc} ({path})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = cls._holder(os.read(fd, 4096).decode(errors="replace"))
            os.close(fd)
            cls._refuse(out, holder)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in _NO_FLOCK:
                raise FlexsampleError(
                    f"cannot lock bench folder {out}: {exc.strerror or exc} ({path})"
                ) from None
            return cls._acquire_record(out, path)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(cls._me()).encode())
        return cls(path, fd)

    @classmethod
    def _acquire_record(cls, out: Path, path: Path) -> BenchLock:
        """Without flock: the holder record alone (stale when its pid is gone from this host)."""
        try:
            holder = cls._holder(path.read_text(encoding="utf-8"))
        except OSError:
            holder = {}
        pid, host = holder.get("pid"), holder.get("host")
        if isinstance(pid, int) and pid != os.getpid():
            if host != socket.gethostname():
                cls._refuse(out, holder, stale_hint=True)
            if pid_alive(pid):
                cls._refuse(out, holder)
        write_json(path, cls._me())
        return cls(path, None)

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
            return
        with contextlib.suppress(OSError):  # the record alone: remove it if still ours
            if self._holder(self.path.read_text(encoding="utf-8")).get("pid") == os.getpid():
                self.path.unlink()

    def __enter__(self) -> BenchLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# --- the grid driver -------------------------------------------------------------------------

SHARED_CHECK = ".flexsample-bench"  # a token the driver writes and every cell reads back


@dataclass
class GridProgress:
    """What the grid is doing, after each event: for progress bars and notebooks."""

    total: int
    done: int = 0
    running: int = 0
    failed: int = 0
    retries: int = 0
    event: str = ""  # 'start', 'done', 'retry', 'failed', 'submitted'
    cell: Cell | None = None
    error: str = ""


@dataclass
class GridReport:
    """How a grid ended: cells finished, cells failed after every retry (with their last
    outcome), and cells left running on the cluster (Slurm --no-wait)."""

    finished: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, Outcome]] = field(default_factory=list)
    pending: list[Cell] = field(default_factory=list)


def make_task(cell: Cell, attempt: int = 1, **extra: Any) -> CellTask:
    return CellTask(
        config=cell.config.model_dump(mode="json"),
        out=str(cell.out.resolve()),
        method=cell.method,
        baseline=cell.baseline,
        key=cell.key,
        label=cell.label,
        attempt=attempt,
        **extra,
    )


def run_grid(
    todo: Sequence[Cell],
    launcher: Launcher,
    retries: int = 1,
    on_progress: Callable[[GridProgress], None] = lambda p: None,
    poll_interval: float = 0.2,
    shared_root: Path | None = None,
    task_options: dict[str, Any] | None = None,
) -> GridReport:
    """Run `todo` through `launcher`: at most `launcher.slots` at once, each failed cell
    recorded (cell.json, status failed) and retried up to `retries` more times, the rest of
    the grid going on. Ctrl-C (or SIGTERM) cancels the running cells, whose folders stay
    unfinished and rerun next time, and propagates.

    `shared_root` (the bench folder) gets a token file every cell must read back: a worker
    that does not see the driver's folder fails with a line saying --out must be shared.
    """
    extra = dict(task_options or {})
    if shared_root is not None:
        extra.update(shared_check(shared_root))
    grid = _Grid(launcher, retries, on_progress, extra, len(todo))
    try:
        launcher.start([make_task(c, **extra) for c in todo])
        grid.reattach(todo)
        while grid.pending or grid.running:
            submitted = grid.submit_free()
            if not launcher.waits:
                grid.leave_running()
                break
            if not grid.poll_running() and not submitted:
                time.sleep(poll_interval)
    except BaseException:
        launcher.cancel([job for job, _, _ in grid.running.values()])
        raise
    finally:
        launcher.close()
    return grid.report


def shared_check(root: Path) -> dict[str, str]:
    """The token file under `root` every cell must read back (`_check_shared`), kept across
    drivers (cells an earlier driver submitted still carry it): the task options naming it."""
    check = root / SHARED_CHECK
    try:
        token = check.read_text(encoding="utf-8").strip()
    except OSError:
        token = ""
    if len(token) != 32:
        token = uuid.uuid4().hex
        check.write_text(token + "\n", encoding="utf-8")
    return {"check_file": str(check.resolve()), "check_token": token}


class _Grid:
    """The driver's state while a grid runs: cells waiting (with their next attempt), cells
    running (job, cell, attempt), the progress and the report."""

    def __init__(
        self,
        launcher: Launcher,
        retries: int,
        on_progress: Callable[[GridProgress], None],
        extra: dict[str, Any],
        total: int,
    ) -> None:
        self.launcher = launcher
        self.retries = retries
        self.on_progress = on_progress
        self.extra = extra
        self.progress = GridProgress(total=total)
        self.report = GridReport()
        self.pending: deque[tuple[Cell, int]] = deque()
        self.running: dict[int, tuple[Any, Cell, int]] = {}  # id -> (job, cell, attempt)

    def emit(self, event: str, cell: Cell | None, error: str = "") -> None:
        progress = self.progress
        progress.event, progress.cell, progress.error = event, cell, error
        progress.running = len(self.running)
        self.on_progress(progress)

    def reattach(self, todo: Sequence[Cell]) -> None:
        """Queue `todo`, less the cells whose jobs an earlier driver left running (those are
        waited for as if this driver had submitted them)."""
        alive = self.launcher.attach([make_task(c, **self.extra) for c in todo])
        for cell, job in zip(todo, alive, strict=True):
            if job is None:
                self.pending.append((cell, 1))
        for cell, job in zip(todo, alive, strict=True):
            if job is not None:
                self.running[id(cell)] = (job, cell, 1)
                self.emit("start", cell)

    def submit_free(self) -> bool:
        """Submit as many waiting cells as the launcher has free slots; whether any went."""
        slots = self.launcher.slots
        free = len(self.pending) if slots is None else slots - len(self.running)
        batch = [self.pending.popleft() for _ in range(min(free, len(self.pending)))]
        if not batch:
            return False
        jobs = self.launcher.submit([make_task(c, a, **self.extra) for c, a in batch])
        for job, (cell, attempt) in zip(jobs, batch, strict=True):
            self.running[id(cell)] = (job, cell, attempt)
            self.emit("start", cell)
        return True

    def leave_running(self) -> None:
        """The driver returns without waiting (Slurm --no-wait): the running cells are pending
        in the report."""
        self.report.pending = [cell for _, cell, _ in self.running.values()]
        self.running.clear()
        self.emit("submitted", None)

    def poll_running(self) -> bool:
        """Ask the launcher about every running cell; whether any of them ended."""
        changed = False
        for key, (job, cell, attempt) in list(self.running.items()):
            outcome = self.launcher.poll(job)
            if outcome is None:
                continue
            changed = True
            del self.running[key]
            self.settle(cell, attempt, outcome)
        return changed

    def settle(self, cell: Cell, attempt: int, outcome: Outcome) -> None:
        """A cell's attempt ended: finished (its folder says so), retried, or failed."""
        if outcome.ok and finished(cell) is not None:
            self.progress.done += 1
            self.report.finished.append(cell)
            self.emit("done", cell)
            return
        if outcome.ok:  # ran, but its folder does not hold the finished cell
            outcome = Outcome(
                False,
                error=f"cell finished but {cell.out / CELL_FILE} is missing",
                where=outcome.where,
            )
        write_failure(cell, outcome, attempt)
        if attempt <= self.retries:
            self.progress.retries += 1
            self.pending.append((cell, attempt + 1))
            self.emit("retry", cell, outcome.error)
        else:
            self.progress.failed += 1
            self.report.failed.append((cell, outcome))
            self.emit("failed", cell, outcome.error)


@dataclass
class BenchResult:
    """A finished `run_bench`: its cells, how the grid went, and the summary files."""

    out: Path
    cells: list[Cell]
    skipped: list[Cell]  # finished before this call
    report: GridReport
    summary: Any = None  # bench_summary.SummaryInfo

    @property
    def failed(self) -> list[tuple[Cell, Outcome]]:
        return self.report.failed


def run_bench(
    base: RunConfig,
    out: Path,
    *,
    estimators: list[str] | None = None,
    policies: list[str] | None = None,
    datasets: list[str] | None = None,
    imbalance_ratios: list[float] | None = None,
    seeds: list[int] | None = None,
    baselines: list[str] | None = None,
    budgets: list[str] | None = None,
    launcher: str | Launcher = "local",
    jobs: int | None = None,
    cells_per_gpu: int | None = None,
    cpus_per_cell: int | None = None,
    retries: int = 1,
    launcher_options: dict[str, Any] | None = None,
    on_progress: Callable[[GridProgress], None] = lambda p: None,
    on_plan: Callable[[list[Cell], list[Cell], Launcher], None] = lambda c, t, lau: None,
    command: str = "",
    log_to: Sequence[str] = (),
    log_dir: Path | None = None,
    recipe_bases: dict[str, RunConfig] | None = None,
) -> BenchResult:
    """Plan the grid, run its unfinished cells, write bench.csv / summary.md / summary.png.

    The library form of `flexsample bench` (the CLI only parses and prints): every name is
    checked before the first cell runs, a bad value raises FlexsampleError with the CLI's
    line. `on_plan(cells, todo, launcher)` is called once the grid is known.

    `launcher` is a registered launcher's name (or a Launcher); `jobs`, `cells_per_gpu`,
    `cpus_per_cell` and `launcher_options` are its options, checked against those it declares
    (`make_launcher`); None leaves an option to the launcher's default. `log_to` names
    registered trackers (`TRACKERS`).
    """
    log_to = check_trackers(log_to)  # names and packages checked before any cell
    if isinstance(launcher, str):
        launcher = check_launcher(launcher)  # an unknown name: one line, before any work
    if retries < 0 or retries > 100:
        raise FlexsampleError(f"--retries {retries} is out of range; accepted: 0 <= x <= 100")
    out = Path(out)
    cells = plan_cells(
        base,
        out,
        estimators,
        policies,
        datasets,
        imbalance_ratios,
        seeds,
        baselines,
        budgets,
        recipe_bases,
    )
    # the grid's names and options are checked above, before torch is imported (here)
    from .bench_summary import write_summary
    from .run import build_components, load_plugins

    load_plugins(base.plugin)
    for cell in cells:  # every name checked before the first cell runs
        build_components(cell.config)
    if log_to:  # each tracker's destination once, before any cell (not the same line per cell)
        build_trackers(
            log_to,
            run_dir=out / "destination-check",
            log_dir=log_dir,
            config={},
            run_name="destination-check",
            group=out.resolve().name,
        )
    if isinstance(launcher, str):
        launcher = make_launcher(
            launcher,
            launcher_options,
            out,
            base.device,
            jobs=jobs,
            cells_per_gpu=cells_per_gpu,
            cpus_per_cell=cpus_per_cell,
        )
    out.mkdir(parents=True, exist_ok=True)
    with BenchLock.acquire(out):  # before the first write: a second bench touches nothing
        todo = [c for c in cells if finished(c) is None]
        skipped = [c for c in cells if c not in todo]
        on_plan(cells, todo, launcher)
        extra: dict[str, Any] = {}
        if log_to:
            extra.update(
                log_to=tuple(log_to),
                log_dir=str(log_dir.resolve()) if log_dir else "",
                group=out.resolve().name,
            )
        report = run_grid(
            todo,
            launcher,
            retries,
            on_progress,
            shared_root=out if launcher.name != "local" else None,
            task_options=extra,
        )
        result = BenchResult(out, cells, skipped, report)
        command = command or "flexsample.workflows.bench.run_bench"
        result.summary = write_summary(out, cells, command)
    return result


def make_launcher(
    name: str,
    options: dict[str, Any] | None,
    out: Path,
    device: str = "auto",
    *,
    jobs: int | None = None,
    cells_per_gpu: int | None = None,
    cpus_per_cell: int | None = None,
) -> Launcher:
    """Launcher `name` (registered in LAUNCHERS) with `options` and the grid-wide ones
    (`jobs`, `cells_per_gpu`, `cpus_per_cell`: None = not given), each checked against the
    options the launcher declares: a launcher refuses an option it does not declare (one
    line naming the launchers that take it). The bench folder (`out`) and `--device` are its
    run-time arguments. `jobs` / `cells_per_gpu` equal to 1, the default of `--launcher
    local`, count as not given for a launcher that does not take them."""
    name = check_launcher(name)
    given = dict(options or {})
    declared = LAUNCHERS.options(name).model_fields
    for key, value in (("jobs", jobs), ("cells_per_gpu", cells_per_gpu)):
        if value is not None and not (value == 1 and key not in declared):
            given[key] = value
    if cpus_per_cell is not None:
        given["cpus_per_cell"] = cpus_per_cell
    return build_launcher(name, given, out=out, device=device)
