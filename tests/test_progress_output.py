"""Runs can be followed in a job log: plain progress lines when output is not a terminal.

Live rich bars print nothing until they stop when stdout is a file or a pipe (a synthetic
ISIC-profile run once showed nothing for 51 minutes). Off a terminal the CLI's progress
objects print plain, time-stamped, flushed lines; long phases (SSL pre-training, anchor
features, image checks and cache building) report through a `Reporter`.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from flexsample.cli.console import (
    ConsoleReporter,
    PlainProgress,
    ProgressDisplay,
    progress_bars,
)
from flexsample.datasets import build_dataset
from flexsample.datasets.base import Split
from flexsample.datasets.images import DecodedCache
from flexsample.engine.interfaces import ValRecord
from flexsample.engine.loop import QueryResult
from flexsample.training.anchor_features import anchor_features
from flexsample.training.models import create_model
from flexsample.training.ssl import ssl_weights, train_ssl
from flexsample.workflows.progress import Reporter

from .conftest import REPO

STAMP = re.compile(r"^\[ *\d+\.\d s\] ")


def _plain() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=False, width=120), buf


def _lines(buf: io.StringIO) -> list[str]:
    return [ln for ln in buf.getvalue().splitlines() if ln.strip()]


class Recorder(Reporter):
    """A reporter that remembers every task, its total and how far it was advanced."""

    def __init__(self) -> None:
        self.tasks: list[list] = []
        self.messages: list[str] = []

    @contextlib.contextmanager
    def task(self, name: str, total: int):
        entry = [name, total, 0]
        self.tasks.append(entry)

        def advance(n: int = 1) -> None:
            entry[2] += n

        yield advance

    def message(self, text: str) -> None:
        self.messages.append(text)


# ---------------------------------------------------------------- the CLI's progress objects


def test_reporter_prints_phase_lines_with_elapsed_time() -> None:
    console, buf = _plain()
    reporter = ConsoleReporter(console)
    with reporter.phase("anchors"):
        reporter.message("using cached SSL weights")
    with pytest.raises(RuntimeError), reporter.phase("evaluation"):
        raise RuntimeError("boom")
    lines = _lines(buf)
    assert all(STAMP.match(ln) for ln in lines), lines
    assert lines[0].endswith("anchors ...")
    assert lines[1].endswith("using cached SSL weights")
    assert re.search(r"anchors: done in \d+\.\d s$", lines[2])
    assert lines[3].endswith("evaluation ...")
    assert re.search(r"evaluation: stopped after \d+\.\d s$", lines[4])


def test_reporter_task_prints_a_few_lines_not_one_per_item() -> None:
    console, buf = _plain()
    with ConsoleReporter(console).task("decoding train", 1000) as advance:
        for _ in range(250):
            advance(4)
    lines = _lines(buf)
    assert lines[0].endswith("decoding train: 0/1000")
    assert lines[-1].endswith("decoding train: 1000/1000")
    assert len(lines) == 11  # the start and every tenth
    # small totals (epochs) get a line per unit
    console, buf = _plain()
    with ConsoleReporter(console).task("SSL pre-training (3 epochs)", 3) as advance:
        for _ in range(3):
            advance(1)
    assert [ln.split("] ")[1] for ln in _lines(buf)] == [
        f"SSL pre-training (3 epochs): {i}/3" for i in range(4)
    ]


def test_reporter_on_a_terminal_draws_no_plain_lines() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    reporter = ConsoleReporter(console)
    with reporter.phase("loading"), reporter.task("decoding", 10) as advance:
        advance(10)
    assert not any(STAMP.match(ln) for ln in buf.getvalue().splitlines())
    assert "loading" in buf.getvalue()


def test_progress_display_prints_epoch_and_scoring_lines() -> None:
    console, buf = _plain()
    display = ProgressDisplay(console, epoch_budget=4)
    with display:
        display.on_epoch_start(0, 66)
        display.on_epoch_end(0, 1.23456, ValRecord(0, 0.5, (0.5, 0.5)), True)
        display.on_scoring_start(1, 185)
        display.on_scoring_advance(185)
        empty = np.zeros(0, np.int64)
        display.on_query(QueryResult(1, empty, np.arange(185), np.zeros(185), np.arange(94), 1.5))
        display.on_query(QueryResult(2, empty, empty, np.zeros(0), np.arange(10), 0.0))
        display.on_epoch_start(1, 160)
        display.on_epoch_end(1, 0.9, ValRecord(1, 0.4, (0.4, 0.4)), False)
    lines = [ln.split("] ", 1)[1] for ln in _lines(buf)]
    epoch_line = r"epoch 1/4  subset 66  loss 1\.2346  val bal-acc 0\.5000 \*  \(\d+\.\d s\)"
    assert re.fullmatch(epoch_line, lines[0]), lines[0]
    assert lines[1] == "step 1: scoring 185 candidates"
    assert lines[2] == "step 1: scored 185 candidates in 1.5 s, added 94"
    assert lines[3] == "step 2: added 10 (no scoring needed)"
    assert lines[4].startswith("epoch 2/4  subset 160  loss 0.9000  val bal-acc 0.4000  (")


def test_long_scoring_pass_prints_intermediate_lines(monkeypatch) -> None:
    from flexsample.cli import console as console_mod

    monkeypatch.setattr(console_mod, "QUIET_GAP_S", 0.0)  # as if each batch took minutes
    console, buf = _plain()
    display = ProgressDisplay(console, epoch_budget=1)
    display.on_scoring_start(3, 1000)
    for _ in range(20):
        display.on_scoring_advance(50)
    lines = [ln.split("] ", 1)[1] for ln in _lines(buf)]
    assert lines[0] == "step 3: scoring 1000 candidates"
    assert [ln.split(" (")[0] for ln in lines[1:]] == [
        f"step 3: scored {k}/1000" for k in range(100, 1001, 100)
    ]


def test_plain_lines_are_flushed_as_written() -> None:
    class Counting(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            Counting.flushes += 1
            super().flush()

    buf = Counting()
    reporter = ConsoleReporter(Console(file=buf, force_terminal=False))
    before = Counting.flushes
    reporter.message("hello")
    assert "hello" in buf.getvalue() and Counting.flushes > before


def test_progress_bars_off_a_terminal_print_one_line_per_bench_cell() -> None:
    console, buf = _plain()
    bars = progress_bars(console, "cell {task.completed}/{task.total}")
    assert isinstance(bars, PlainProgress)
    with bars:  # exactly how `flexsample bench` drives it
        task = bars.add_task("bench", total=2, info="")
        for method in ("mcdropout", "random"):
            bars.update(task, info=f"{method} seed 0")
            bars.update(task, advance=1, info=f"done {method} seed 0")
    assert [ln.split("] ", 1)[1] for ln in _lines(buf)] == [
        "cell 0/2  mcdropout seed 0",
        "cell 1/2  done mcdropout seed 0",
        "cell 1/2  random seed 0",
        "cell 2/2  done random seed 0",
    ]


def test_run_output_captured_off_a_terminal_has_plain_progress(cli, tmp_path: Path) -> None:
    """CliRunner captures stdout like a job log does: not a terminal."""
    res = cli(
        "run",
        "--rounds",
        "2",
        "--epochs-per-round",
        "1",
        "--device",
        "cpu",
        "--out",
        tmp_path / "run",
    )
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert re.search(
        r"^\[ *\d+\.\d s\] epoch 1/2  subset \d+  loss \d\.\d{4}  val bal-acc "
        r"\d\.\d{4}( \*)?  \(\d+\.\d s\)$",
        out,
        re.M,
    ), out
    assert re.search(r"^\[ *\d+\.\d s\] epoch 2/2  subset \d+ ", out, re.M), out
    assert re.search(r"^\[ *\d+\.\d s\] step 1: ", out, re.M), out


def test_run_with_stdout_to_a_file_writes_progress_lines(tmp_path: Path) -> None:
    """The real command, stdout redirected to a file as in a cluster job."""
    log = tmp_path / "job.log"
    with log.open("w") as f:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "flexsample",
                "run",
                "--rounds",
                "2",
                "--epochs-per-round",
                "1",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "run"),
            ],
            stdout=f,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            timeout=600,
        )
    assert proc.returncode == 0, proc.stderr
    text = log.read_text()
    assert re.search(r"^\[ *\d+\.\d s\] epoch 1/2  subset \d+  loss ", text, re.M), text
    assert "\x1b[" not in text.split("Rounds")[0]  # no cursor movement or colour codes


# ---------------------------------------------------------------- long phases report progress


@pytest.fixture(scope="module")
def digits():
    return build_dataset("digits-lt")


def _tiny_split(ds, n: int = 24) -> Split:
    return Split(ds.train.labels[:n], ds.train.ids[:n], ds.train.in_memory[:n])


@pytest.mark.needs("lightly")
def test_ssl_pretraining_reports_each_epoch(digits) -> None:
    rec = Recorder()
    model = create_model("small-cnn", digits.num_classes, 1, 0.5)
    train_ssl(
        model,
        _tiny_split(digits),
        epochs=3,
        seed=0,
        device=torch.device("cpu"),
        batch_size=16,
        progress=rec,
    )
    assert rec.tasks == [["SSL pre-training (3 epochs)", 3, 3]]
    # a plain callable still gets the images of every batch
    seen: list[int] = []
    train_ssl(
        model,
        _tiny_split(digits),
        epochs=2,
        seed=0,
        device=torch.device("cpu"),
        batch_size=16,
        progress=seen.append,
    )
    assert sum(seen) == 2 * 24


@pytest.mark.needs("lightly")
def test_ssl_cache_hit_says_so(digits, tmp_path: Path) -> None:
    ds = build_dataset("digits-lt")
    ds.train = _tiny_split(digits)

    def factory():
        return create_model("small-cnn", ds.num_classes, 1, 0.5)

    options = dict(
        backbone="small-cnn", seed=0, ssl_epochs=1, cache_dir=tmp_path, ssl_batch_size=16
    )
    first = Recorder()
    ssl_weights(ds, factory, progress=first, **options)
    assert [t[0] for t in first.tasks] == ["SSL pre-training (1 epochs)"]
    again = Recorder()
    ssl_weights(ds, factory, progress=again, **options)
    assert again.tasks == [] and "cached" in again.messages[0]


@pytest.mark.needs("lightly")
def test_anchor_features_report_per_batch(digits, tmp_path: Path) -> None:
    rec = Recorder()
    feats = anchor_features("pixels", digits, lambda: None, progress=rec)
    n = len(digits.train)
    assert feats.shape[0] == n
    assert rec.tasks == [["anchor features (pixels)", n, n]]
    ds = build_dataset("digits-lt")
    ds.train = _tiny_split(digits)
    rec = Recorder()
    anchor_features(
        "ssl",
        ds,
        lambda: create_model("small-cnn", ds.num_classes, 1, 0.5),
        ssl_epochs=2,
        batch_size=16,
        ssl_batch_size=16,
        cache_dir=tmp_path,
        progress=rec,
    )
    assert rec.tasks == [
        ["SSL pre-training (2 epochs)", 2, 2],
        ["anchor features (embedding)", 24, 24],
    ]


def _pngs(root: Path, per_class: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for cls, n in per_class.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")


def test_image_checks_and_cache_building_report_progress(tmp_path: Path) -> None:
    _pngs(tmp_path / "data", {"a": 12, "b": 10})
    rec = Recorder()
    ds = build_dataset(
        "imagefolder",
        data_dir=str(tmp_path / "data"),
        image_size=8,
        imbalance_ratio=2,
        cache_dir=str(tmp_path / "cache"),
        progress=rec,
    )
    total = len(ds.train) + len(ds.val) + len(ds.test)
    assert rec.tasks[0] == ["checking image files", total, total]
    decoded = {t[0]: t for t in rec.tasks[1:]}
    assert decoded["decoding imagefolder-train (8 px cache)"][1:] == [len(ds.train)] * 2
    assert sum(t[1] for t in decoded.values()) == total
    assert all(t[1] == t[2] for t in decoded.values())
    # a cache that is already there decodes nothing and reports nothing
    rec = Recorder()
    paths = [str(p) for p in sorted((tmp_path / "data" / "a").iterdir())]
    DecodedCache(tmp_path / "c2").build("x", paths, 8, progress=rec)
    DecodedCache(tmp_path / "c2").build("x", paths, 8, progress=(again := Recorder()))
    assert rec.tasks == [["decoding x (8 px cache)", 12, 12]] and again.tasks == []
