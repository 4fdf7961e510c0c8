"""Experiment tracking (`--log-to`): what a tiny run logged, read back with each tool's reader.

TensorBoard through its EventAccumulator, MLflow through `mlflow.search_runs` / MlflowClient,
W&B through its offline run file (`wandb leet inspect --json`, W&B's own reader), CSV through
the csv module; values are checked against the run folder's own files (rounds.jsonl,
results.json, scores.npz, selection.npz) and hand-computed learning rates. Nothing touches the
network: W&B runs offline, MLflow writes to a folder.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flexsample.engine import faults
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.interfaces import EpochResult, ValRecord
from flexsample.engine.loop import QueryResult, StepRecord
from flexsample.integrations import trackers as tr

from .conftest import TINY, Cli, one_error_line

pytestmark = pytest.mark.needs("tensorboard", "mlflow", "wandb")

ALL = "tensorboard,mlflow,wandb,csv"
EPOCHS = 6  # TINY: 3 rounds of 2 epochs
LR = 3e-3  # RunConfig's default --lr
SHORT = [*TINY, "--rounds", "2", "--epochs-per-round", "1"]  # one query, before epoch 1


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny runs are fastest on one thread (and leave the other core to the trackers)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def offline_env(mp: pytest.MonkeyPatch, tmp: Path) -> None:
    """No network, nothing in $HOME: W&B offline in tmp, MLflow's default store in tmp."""
    for var in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_NAME",
        "WANDB_API_KEY",
        "WANDB_IDENTITY_TOKEN_FILE",
        "WANDB_DIR",
        "WANDB_PROJECT",
        "WANDB_BASE_URL",
        "WANDB_CONSOLE",
        faults.ENV,
    ):
        mp.delenv(var, raising=False)
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_X_DISABLE_STATS", "WANDB_X_DISABLE_META", "WANDB_X_DISABLE_MACHINE_INFO"):
        mp.setenv(var, "true")  # no system sampling: faster start-up
    mp.setenv("WANDB_X_SAVE_REQUIREMENTS", "false")
    mp.setenv("WANDB_DISABLE_GIT", "true")
    mp.setenv("NETRC", str(tmp / "no-netrc"))
    for var, sub in (
        ("WANDB_CONFIG_DIR", "wandb-config"),
        ("WANDB_CACHE_DIR", "wandb-cache"),
        ("WANDB_DATA_DIR", "wandb-data"),
        ("WANDB_ARTIFACT_DIR", "wandb-artifacts"),
    ):
        mp.setenv(var, str(tmp / sub))
    mp.setattr(faults, "_hits", {})
    mp.chdir(tmp)  # MLflow's default store: ./mlruns


@dataclass
class Tracked:
    tmp: Path
    out: Path
    results: dict[str, Any]
    rounds: list[dict[str, Any]]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Tracked:
    """One tiny run logging to all four trackers at once (shared by the read-back tests)."""
    tmp = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as mp:
        offline_env(mp, tmp)
        out = tmp / "tiny-run"
        res = Cli()("run", *TINY, "--out", out, "--log-to", ALL)
        assert res.exit_code == 0, res.output
        results = json.loads((out / "results.json").read_text())
        rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
        yield Tracked(tmp, out, results, rounds)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def cosine_lrs() -> list[float]:
    """Hand-computed: a fresh AdamW + cosine (T_max = 2) each round, lr stepped per epoch."""
    per_round = [LR, LR * (1 + math.cos(math.pi / 2)) / 2]  # 3e-3, 1.5e-3
    return per_round * (EPOCHS // 2)


def chosen_from_run_folder(out: Path, step: int) -> np.ndarray:
    """The chosen samples' scores from scores.npz and selection.npz (the run's own record)."""
    scores, sel = np.load(out / "scores.npz"), np.load(out / "selection.npz")
    picked = sel["index"][sel["step"] == step]
    here = scores["step"] == step
    keep = np.isin(scores["index"][here], picked)
    return np.sort(scores["score"][here][keep])


# -- CSV -----------------------------------------------------------------------------------------
def test_csv_logs_epochs_queries_steps_and_test(tracked: Tracked) -> None:
    logs = tracked.out / "logs"
    epochs = read_csv(logs / "epochs.csv")
    assert [int(r["epoch"]) for r in epochs] == list(range(EPOCHS))
    assert [float(r["train_lr"]) for r in epochs] == pytest.approx(cosine_lrs())
    for rec in tracked.rounds:  # each step's last epoch: the val accuracy rounds.jsonl kept
        last = epochs[rec["epoch"] + rec["epochs"] - 1]
        assert float(last["val_balanced_accuracy"]) == pytest.approx(rec["val_balanced_accuracy"])
        recall = [float(last[f"val_recall_{c}"]) for c in range(len(rec["class_counts"]))]
        assert recall == pytest.approx(rec["val_per_class_recall"])
        for e in range(rec["epoch"], rec["epoch"] + rec["epochs"]):
            assert int(epochs[e]["train_subset_size"]) == rec["subset_size"]

    steps = read_csv(logs / "steps.csv")
    assert [int(r["step"]) for r in steps] == [r["step"] for r in tracked.rounds]
    for row, rec in zip(steps, tracked.rounds, strict=True):
        assert int(row["epoch"]) == rec["epoch"] + rec["epochs"]  # when the span closed
        assert int(row["subset_size"]) == rec["subset_size"]
        counts = [int(row[f"class_count_{c}"]) for c in range(len(rec["class_counts"]))]
        assert counts == rec["class_counts"]
        assert float(row["score_seconds"]) == pytest.approx(rec["score_s"])

    queries = read_csv(logs / "queries.csv")
    later = tracked.rounds[1:]
    assert [int(q["step"]) for q in queries] == [r["step"] for r in later]
    for q, prev, rec in zip(queries, tracked.rounds, later, strict=False):
        assert int(q["epoch"]) == rec["epoch"]
        assert int(q["chosen"]) == rec["subset_size"] - prev["subset_size"]
        quotas = [int(q[f"quota_{c}"]) for c in range(len(rec["class_counts"]))]
        assert quotas == (np.subtract(rec["class_counts"], prev["class_counts"])).tolist()

    scores = read_csv(logs / "chosen_scores.csv")
    for rec in later:
        logged = sorted(float(r["score"]) for r in scores if int(r["step"]) == rec["step"])
        assert logged == pytest.approx(chosen_from_run_folder(tracked.out, rec["step"]).tolist())
    assert scores, "the tiny run scored no candidates: nothing checks the histograms"

    (test,) = read_csv(logs / "test.csv")
    for section in ("test", "test_last"):
        for key in ("balanced_accuracy", "accuracy"):
            got = float(test[f"{section}_{key}"])
            assert got == pytest.approx(tracked.results[section][key])
    params = dict((r["parameter"], r["value"]) for r in read_csv(logs / "params.csv"))
    assert params["rounds"] == "3" and params["estimator"] == "mcdropout"


# -- TensorBoard ---------------------------------------------------------------------------------
def test_tensorboard_event_files_read_back(tracked: Tracked) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(
        str(tracked.out / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0}
    )
    acc.Reload()
    tags = acc.Tags()
    lr = acc.Scalars("train/lr")
    assert [e.step for e in lr] == list(range(EPOCHS))
    assert [e.value for e in lr] == pytest.approx(cosine_lrs(), rel=1e-6)
    epochs = read_csv(tracked.out / "logs" / "epochs.csv")
    loss = [e.value for e in acc.Scalars("train/loss")]
    assert loss == pytest.approx([float(r["train_loss"]) for r in epochs], rel=1e-6)
    val = acc.Scalars("val/balanced_accuracy")
    assert [e.value for e in val] == pytest.approx(
        [float(r["val_balanced_accuracy"]) for r in epochs], rel=1e-6
    )
    assert "val/recall/0" in tags["scalars"] and "step/class_count/0" in tags["scalars"]
    sizes = acc.Scalars("step/subset_size")
    assert [int(e.value) for e in sizes] == [r["subset_size"] for r in tracked.rounds]
    (test,) = acc.Scalars("test/balanced_accuracy")
    assert test.step == EPOCHS
    assert test.value == pytest.approx(tracked.results["test"]["balanced_accuracy"], rel=1e-6)

    hist = acc.Histograms("query/chosen_scores")
    for event in hist:
        step = next(r["step"] for r in tracked.rounds if r["epoch"] == event.step)
        expected = chosen_from_run_folder(tracked.out, step)
        h = event.histogram_value
        assert h.num == len(expected)
        assert (h.min, h.max) == pytest.approx((expected.min(), expected.max()))
    assert hist
    assert "config/text_summary" in tags["tensors"]  # the config as a text table


# -- MLflow ---------------------------------------------------------------------------------------
def test_mlflow_default_store_read_back(tracked: Tracked, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    store = tracked.tmp / "mlruns"  # the run's current directory: MLflow's default store here
    assert store.is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    (run,) = mlflow.search_runs(experiment_names=["flexsample"], output_format="list")
    assert run.info.run_name == "tiny-run"
    assert run.info.status == "FINISHED"
    assert run.data.params["estimator"] == "mcdropout"
    assert run.data.params["epochs_per_round"] == "2"
    assert run.data.params["plugin"] == "[]"
    for section in ("test", "test_last"):
        got = run.data.metrics[f"{section}/balanced_accuracy"]
        assert got == pytest.approx(tracked.results[section]["balanced_accuracy"])
    assert "test/confusion_matrix/0/0" not in run.data.metrics  # tables stay in results.json

    client = MlflowClient(store.as_uri())
    history = client.get_metric_history(run.info.run_id, "train/lr")
    history = sorted((m.step, m.value) for m in history)
    assert [step for step, _ in history] == list(range(EPOCHS))
    assert [value for _, value in history] == pytest.approx(cosine_lrs())
    sizes = client.get_metric_history(run.info.run_id, "step/subset_size")
    assert sorted(int(m.value) for m in sizes) == [r["subset_size"] for r in tracked.rounds]

    files = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "run")}
    assert {"results.json", "config.json", "rounds.jsonl", "best.pt", "curves.png"} <= files
    assert not {f for f in files if f.startswith("checkpoint")}  # resume state stays behind
    hists = client.list_artifacts(run.info.run_id, "chosen_scores")
    assert hists
    doc = json.loads(Path(client.download_artifacts(run.info.run_id, hists[0].path)).read_text())
    expected = chosen_from_run_folder(tracked.out, doc["step"])
    assert doc["n"] == sum(doc["counts"]) == len(expected)
    assert doc["bin_edges"][0] == pytest.approx(expected.min())


# -- W&B ---------------------------------------------------------------------------------------
def wandb_records(run_dir: Path) -> list[dict[str, Any]]:
    """The records of an offline W&B run, decoded by W&B's own reader."""
    (offline,) = sorted((run_dir / "wandb").glob("offline-run-*"))
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_wandb_offline_run_read_back(tracked: Tracked) -> None:
    records = wandb_records(tracked.out)
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    config = run["config"]["update"]
    assert config["estimator"] == "mcdropout" and config["rounds"] == 3
    assert run["display_name"] == "tiny-run" and run["project"] == "flexsample"

    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    epochs = [h for h in history if "train/loss" in h]
    assert [h["epoch"] for h in epochs] == list(range(EPOCHS))
    assert [h["train/lr"] for h in epochs] == pytest.approx(cosine_lrs())
    sizes = [h["step/subset_size"] for h in history if "step/subset_size" in h]
    assert sizes == [r["subset_size"] for r in tracked.rounds]
    hists = [h for h in history if "query/chosen_scores._type" in h]
    assert hists and all(h["query/chosen_scores._type"] == "histogram" for h in hists)
    for h in hists:
        step = next(r["step"] for r in tracked.rounds if r["epoch"] == h["epoch"])
        assert sum(h["query/chosen_scores.values"]) == len(
            chosen_from_run_folder(tracked.out, step)
        )

    summary: dict[str, Any] = {}
    for r in records:
        if r["type"] == "summary":
            summary.update(r["summary"].get("update", {}))
    got = summary["test/balanced_accuracy"]
    assert got == pytest.approx(tracked.results["test"]["balanced_accuracy"])
    (artifact,) = [r["artifact"] for r in records if r["type"] == "artifact"]
    names = {c["path"] for c in artifact["manifest"]["contents"]}
    assert {"results.json", "config.json", "best.pt"} <= names
    assert not {n for n in names if n.startswith("checkpoint")}
    (done,) = [r["exit"] for r in records if r["type"] == "exit"]
    assert done.get("exit_code", 0) == 0


# -- one tracker alone, --log-dir, resume --------------------------------------------------------
def test_one_tracker_into_log_dir(tmp_path: Path, monkeypatch) -> None:
    """--log-to X writes X only, under --log-dir/<run folder name>."""
    offline_env(monkeypatch, tmp_path)
    out, logs = tmp_path / "solo", tmp_path / "all-logs"
    res = Cli()("run", *SHORT, "--out", out, "--log-to", "tensorboard", "--log-dir", logs)
    assert res.exit_code == 0, res.output
    assert [p.name for p in logs.iterdir()] == ["solo"]
    assert [p.name.split(".")[0] for p in (logs / "solo").iterdir()] == ["events"]
    assert not (out / "logs").exists() and not (out / "tensorboard").exists()
    assert not (tmp_path / "mlruns").exists() and not (out / "wandb").exists()


def test_resume_after_interrupt_logs_each_epoch_once(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C after a step's record was logged but before the next checkpoint, then --resume:
    CSV rows are cut back to the checkpoint, TensorBoard purges the replayed epochs, MLflow
    continues the same run."""
    offline_env(monkeypatch, tmp_path)
    out = tmp_path / "resumed"
    args = ["run", *SHORT, "--out", out, "--log-to", "csv,tensorboard,mlflow"]
    monkeypatch.setenv(faults.ENV, "query:interrupt@1")  # after step 0 closed, before epoch 1
    assert Cli()(*args).exit_code == 130
    assert len(read_csv(out / "logs" / "steps.csv")) == 1  # logged before the interrupt
    monkeypatch.delenv(faults.ENV)
    res = Cli()(*args, "--resume")
    assert res.exit_code == 0, res.output

    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert [int(r["step"]) for r in read_csv(out / "logs" / "steps.csv")] == [
        r["step"] for r in rounds
    ]
    epochs = [int(r["epoch"]) for r in read_csv(out / "logs" / "epochs.csv")]
    assert epochs == [0, 1]
    assert len(read_csv(out / "logs" / "test.csv")) == 1

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [0, 1]
    assert [int(e.value) for e in acc.Scalars("step/subset_size")] == [
        r["subset_size"] for r in rounds
    ]

    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    (run,) = mlflow.search_runs(experiment_names=["flexsample"], output_format="list")
    assert run.info.status == "FINISHED"
    steps = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in steps) == [0, 1]


# -- errors ----------------------------------------------------------------------------------------
def test_unknown_tracker_is_one_line_exit_2(cli, tmp_path: Path) -> None:
    line = one_error_line(cli("run", *TINY, "--out", tmp_path / "x", "--log-to", "csv,neptune"))
    assert "unknown tracker 'neptune'" in line
    assert "accepted: csv, mlflow, tensorboard, wandb" in line  # TRACKERS.names(), sorted
    assert not (tmp_path / "x").exists()


def test_log_dir_without_tracker_is_refused(cli, tmp_path: Path) -> None:
    line = one_error_line(cli("run", *TINY, "--out", tmp_path / "x", "--log-dir", tmp_path))
    assert "--log-dir" in line and "--log-to" in line


@pytest.mark.parametrize("name", ["tensorboard", "mlflow", "wandb"])
def test_missing_package_names_the_extra(name: str, cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, name, None)  # import fails as if it were not installed
    with pytest.raises(FlexsampleError, match=rf"pip install 'flexsample\[{name}\]'"):
        tr.parse_log_to(f"csv,{name}")
    line = one_error_line(cli("run", *TINY, "--out", tmp_path / "x", "--log-to", name))
    assert f"flexsample[{name}]" in line and f"--log-to {name}" in line
    assert not (tmp_path / "x").exists()


def test_parse_log_to() -> None:
    assert tr.parse_log_to(None) == [] == tr.parse_log_to("none") == tr.parse_log_to(" ")
    assert tr.parse_log_to(" CSV, tensorboard,csv ,") == ["csv", "tensorboard"]


def test_wandb_offline_unless_logged_in(tmp_path: Path, monkeypatch) -> None:
    offline_env(monkeypatch, tmp_path)
    monkeypatch.delenv("WANDB_MODE")
    assert tr.wandb_mode() == "offline"  # no key, no netrc entry
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {'a' * 40}\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert tr.wandb_mode() is None  # logged in: W&B's own choice (online, `wandb offline`)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_API_KEY", "b" * 40)
    assert tr.wandb_mode() is None
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tr.wandb_mode() is None  # WANDB_MODE is W&B's to apply


# -- bench cells: make_trackers with a group ---------------------------------------------------
def drive(tracker: tr.Tracker, run_dir: Path) -> None:
    """One query (two scored candidates chosen, one class taken whole), one epoch, the end."""
    query = QueryResult(
        step=1,
        quotas=np.array([2, 1]),
        candidates=np.array([10, 11, 12, 13]),
        scores=np.array([0.9, 0.1, 0.5, 0.3]),
        chosen=np.array([10, 12, 20]),
        seconds=0.25,
    )
    with tracker:
        tracker.on_query(query)
        tracker.on_epoch_start(0, 7)
        tracker.on_epoch_result(0, EpochResult(1.5, 0.1, {"lr": 0.02}))
        tracker.on_epoch_end(0, 1.5, ValRecord(0, 0.5, (0.25, 0.75)), True)
        tracker.on_step_end(StepRecord(1, 0, 7, [4, 3], 0.5, [0.25, 0.75], 0.25, 0.1, 1, 0.5))
    test = {"balanced_accuracy": 0.625, "per_class_recall": [0.5, 0.75]}
    tracker.on_run_end({"test": test, "test_last": test, "best_epoch": 0}, run_dir)


def test_bench_group_for_every_tracker(tmp_path: Path, monkeypatch) -> None:
    import mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    offline_env(monkeypatch, tmp_path)
    uri = (tmp_path / "store").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    cell, logs = tmp_path / "bench-1" / "cell-a", tmp_path / "logs"
    cell.mkdir(parents=True)
    (cell / "results.json").write_text("{}")
    (cell / "checkpoint.pt").write_bytes(b"x")
    made = tr.make_trackers(
        "tensorboard,csv,mlflow,wandb",
        run_dir=cell,
        log_dir=logs,
        config={"estimator": "bald", "seed": 3, "plugin": [], "data_dir": None},
        run_name="cell-a",
        group="bench-1",
    )
    assert [t.name for t in made] == ["tensorboard", "csv", "mlflow", "wandb"]
    for tracker in made:
        drive(tracker, cell)
        assert tracker.closed

    folder = logs / "bench-1" / "cell-a"  # TensorBoard and CSV: a sub-folder per bench
    (query,) = read_csv(folder / "queries.csv")
    assert (int(query["epoch"]), int(query["chosen"]), int(query["scored"])) == (0, 3, 4)
    # scores of the chosen candidates 10 and 12 (20 came with a class taken whole)
    assert float(query["chosen_score_mean"]) == pytest.approx(0.7)
    assert (float(query["chosen_score_min"]), float(query["chosen_score_max"])) == (0.5, 0.9)
    (epoch,) = read_csv(folder / "epochs.csv")
    assert float(epoch["train_lr"]) == 0.02 and float(epoch["val_recall_1"]) == 0.75
    (test,) = read_csv(folder / "test.csv")
    assert float(test["test_per_class_recall_1"]) == 0.75 and test["run_best_epoch"] == "0"

    acc = EventAccumulator(str(folder), size_guidance={"histograms": 0})
    acc.Reload()
    (hist,) = acc.Histograms("query/chosen_scores")
    assert (hist.step, hist.histogram_value.num) == (0, 2)
    assert hist.histogram_value.sum == pytest.approx(1.4)

    (run,) = mlflow.search_runs(experiment_names=["bench-1"], output_format="list")
    assert run.info.run_name == "cell-a" and run.data.tags["flexsample.group"] == "bench-1"
    assert run.data.params == {"estimator": "bald", "seed": "3", "plugin": "[]", "data_dir": "none"}
    assert run.data.metrics["query/chosen_score_max"] == 0.9
    assert run.data.metrics["test/per_class_recall/0"] == 0.5
    files = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "run")]
    assert files == ["run/results.json"]

    records = wandb_records(folder)
    (wb,) = [r["run"] for r in records if r["type"] == "run"]
    assert wb["run_group"] == "bench-1" and wb["display_name"] == "cell-a"
