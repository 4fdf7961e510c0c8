"""Edges of a run (issue 23): tracker destinations checked before the run starts, `--resume` of
a run killed before its first checkpoint, torchrun's trailing short batch, `--pretrained`
without network. No test touches the network beyond localhost.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from flexsample import _net
from flexsample.engine import faults
from flexsample.engine.errors import FlexsampleError

from .conftest import one_error_line

SHORT = ["--rounds", "2", "--epochs-per-round", "1", "--quiet", "--device", "cpu"]


def closed_port() -> int:
    """A localhost port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def no_tracker_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network, nothing in $HOME: W&B offline, MLflow's default store in tmp_path."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_DIR", faults.ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- 1. tracker destinations, checked before the run starts ----------------------------------------
@pytest.mark.needs("tensorboard")
def test_tensorboard_log_dir_that_is_a_file(cli, no_tracker_env: Path) -> None:
    afile = no_tracker_env / "afile"
    afile.write_text("keep me\n")
    res = cli("run", *SHORT, "--out", "run", "--log-to", "tensorboard", "--log-dir", afile)
    line = one_error_line(res)
    assert line.startswith("error: --log-to tensorboard: cannot write its logs to"), line
    assert f"{afile} is a file, not a folder" in line and "--log-dir" in line
    assert afile.read_text() == "keep me\n"  # nothing lost or overwritten
    assert not (no_tracker_env / "run").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_csv_log_dir_that_cannot_be_made_names_the_tracker(cli, no_tracker_env: Path) -> None:
    res = cli("run", *SHORT, "--out", "run", "--log-to", "csv", "--log-dir", "/proc/xx")
    line = one_error_line(res)
    assert line.startswith("error: --log-to csv: cannot write its logs to /proc/xx/run"), line
    assert "run folder" not in line  # the tracker's folder is the problem, not --out
    assert not (no_tracker_env / "run").exists()


def test_folder_check_leaves_nothing_behind(tmp_path: Path) -> None:
    from flexsample.integrations.trackers import check_folder

    check_folder("csv", tmp_path / "a" / "b", "fix it")  # creatable: fine, and not created
    check_folder("csv", tmp_path, "fix it")  # exists and writable
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(FlexsampleError, match=r"^--log-to csv: .*f is a file, not a folder; fix"):
        check_folder("csv", tmp_path / "f" / "logs", "fix it")


@pytest.mark.needs("mlflow")
def test_unreachable_mlflow_server_is_one_line_in_seconds(
    cli, no_tracker_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    line = one_error_line(cli("run", *SHORT, "--out", "run", "--log-to", "mlflow"))
    assert time.monotonic() - started < 60  # MLflow's own retries took minutes
    assert line.startswith(f"error: --log-to mlflow: cannot reach the tracking server {uri} ")
    assert "MLFLOW_TRACKING_URI" in line
    assert not (no_tracker_env / "run").exists()


def test_a_server_that_does_not_answer_waits_three_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unroutable address: the connection attempt gives up after REACH_TIMEOUT_S."""
    from flexsample.integrations import trackers as tr

    waited: list[float] = []

    def silent(address, timeout):
        waited.append(timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(_net.socket, "create_connection", silent)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(FlexsampleError) as err:
        tr.check_reachable("mlflow", "http://10.255.255.1:5000", "fix it", what="tracking server")
    assert waited == [3.0] == [tr.REACH_TIMEOUT_S]
    assert str(err.value) == (
        "--log-to mlflow: cannot reach the tracking server http://10.255.255.1:5000 "
        "(no answer within 3 s); fix it"
    )


@pytest.mark.needs("mlflow")
def test_mlflow_file_store_under_a_file(no_tracker_env: Path, monkeypatch) -> None:
    from flexsample.integrations.trackers.mlflow import check_store

    (no_tracker_env / "f").write_text("x")
    with pytest.raises(FlexsampleError, match=r"^--log-to mlflow: .* is a file, not a folder"):
        check_store((no_tracker_env / "f" / "mlruns").as_uri())
    check_store((no_tracker_env / "mlruns").as_uri())  # creatable: fine


@pytest.mark.needs("wandb")
def test_wandb_online_without_its_server_is_one_line(no_tracker_env: Path, monkeypatch) -> None:
    from flexsample.integrations.trackers import make_trackers

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(FlexsampleError, match=r"^--log-to wandb: cannot reach the W&B server"):
        make_trackers("wandb", run_dir=no_tracker_env / "r", config={}, run_name="r")
    monkeypatch.setenv("WANDB_MODE", "offline")  # offline needs no network
    (made,) = make_trackers("wandb", run_dir=no_tracker_env / "r", config={}, run_name="r")
    made.close()


# -- 2. --resume of a run killed before its first checkpoint ---------------------------------------
RUN = ["--rounds", "3", "--epochs-per-round", "2", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def killed_early(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A run SIGKILLed in its first epoch (before any checkpoint), and what an uninterrupted
    run of the same config gives."""
    from .test_fault_injection import flexsample, outputs

    root = tmp_path_factory.mktemp("killed")
    res = flexsample("run", *RUN, "--out", "run", fault_spec="train-epoch@1", cwd=root)
    assert res.returncode == -9, res.stderr
    res = flexsample("run", *RUN, "--out", "ref", cwd=root)
    assert res.returncode == 0, res.stderr
    return root / "run", outputs(root / "ref")


def copy_of(folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp_path / "run"))


# what each kill leaves: no checkpoint; the second also best.pt and a half-written checkpoint
LEFT = {
    "train-epoch@1": ["config.json", "rounds.jsonl", "scores.npz", "selection.npz"],
    "checkpoint-write@2": ["best.pt", "config.json", "rounds.jsonl", "scores.npz", "selection.npz"],
}


@pytest.mark.parametrize("kill", sorted(LEFT))
def test_killed_before_first_checkpoint_resumes_from_the_beginning(
    killed_early: tuple[Path, dict], tmp_path: Path, kill: str
) -> None:
    from .test_fault_injection import flexsample, outputs

    folder, reference = killed_early
    if kill == "train-epoch@1":
        run = copy_of(folder, tmp_path)
    else:
        res = flexsample("run", *RUN, "--out", "run", fault_spec=kill, cwd=tmp_path)
        assert res.returncode == -9, res.stderr
        run = tmp_path / "run"
    names = sorted(p.name for p in run.iterdir() if not p.name.startswith("."))
    assert names == LEFT[kill]  # what the run leaves at that moment: no checkpoint
    res = flexsample("run", "--out", "run", "--resume", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    said = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert said == [
        "run stopped before its first checkpoint (nothing to resume): starting the run again "
        "from the beginning with its saved config"
    ], said
    assert outputs(run) == reference  # the same run as one never interrupted
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_restart_still_refuses_other_folders(
    cli, killed_early: tuple[Path, dict], tmp_path: Path
) -> None:
    from flexsample.workflows import rundir

    folder, _ = killed_early
    run = copy_of(folder, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != rundir.LOCK}

    line = one_error_line(cli("run", "--out", run, "--resume", "--rounds", "4"))
    assert "--rounds: 3 -> 4" in line  # a config that differs

    with rundir.RunLock.acquire(run):  # another process still running it
        line = one_error_line(cli("run", "--out", run, "--resume"))
    assert "in use by another flexsample process" in line

    (run / "notes.txt").write_text("mine\n")
    line = one_error_line(cli("run", "--out", run, "--resume"))
    assert line == (
        f"error: {run} has no checkpoint to resume from and holds files flexsample did not "
        "write (notes.txt); move them away to start the run again with --resume, or choose "
        "another --out"
    )
    (run / "notes.txt").unlink()

    (run / "results.json").write_text("{}")  # its checkpoints deleted, not killed early
    line = one_error_line(cli("run", "--out", run, "--resume"))
    assert line == (
        f"error: {run} has no checkpoint to resume from, but holds files of a run that went "
        "on (results.json); start it again with --overwrite, or choose another --out"
    )
    (run / "results.json").unlink()

    (run / ".flexsample-run").unlink()  # not made by flexsample
    line = one_error_line(cli("run", "--out", run, "--resume"))
    assert "flexsample did not make it (no .flexsample-run marker)" in line
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.name != rundir.LOCK}
    assert after == {k: v for k, v in before.items() if k != rundir.MARKER}  # all kept


# -- 4. --pretrained imagenet without network fails in seconds ------------------------------------
@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """An empty hub cache, online as far as HF_HUB_OFFLINE says, the hub at a closed localhost
    port; returns the list of downloads attempted (the hub client is a stand-in)."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    tried: list[str] = []

    def slow_download(repo_id, filename, **_):  # the hub client's retries: half a minute
        tried.append(filename)
        time.sleep(30)
        raise OSError("cannot reach the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", slow_download)
    return tried


def test_pretrained_imagenet_offline_fails_fast(cli, empty_hub: list[str], tmp_path: Path) -> None:
    started = time.monotonic()
    res = cli("run", *SHORT, "--backbone", "resnet18", "--pretrained", "imagenet", "--out", "x")
    line = one_error_line(res)
    assert time.monotonic() - started < 25 and empty_hub == []  # no download attempted
    port = os.environ["HF_ENDPOINT"].rsplit(":", 1)[1]
    assert line.startswith(
        "error: --pretrained imagenet: cannot download the weights of 'resnet18' "
        f"(timm/resnet18.a1_in1k) into {tmp_path / 'hub'}: the Hugging Face hub "
        f"http://127.0.0.1:{port} is unreachable (Connection refused); fill the cache"
    ), line
    assert "--pretrained PATH" in line and not (tmp_path / "x").exists()


def test_hub_reachability_waits_at_most_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    from flexsample.training import models

    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.create_server(("127.0.0.1", 0)) as server:  # a hub that answers
        assert models.unreachable(f"http://127.0.0.1:{server.getsockname()[1]}") is None

    def hangs(address, timeout):  # a name lookup that does not return in time
        time.sleep(3)
        raise OSError("gave up")

    monkeypatch.setattr(_net.socket, "create_connection", hangs)
    started = time.monotonic()
    assert models.unreachable("https://huggingface.co", 0.2) == "no answer within 0.2 s"
    assert time.monotonic() - started < 2
    assert models.HUB_REACH_TIMEOUT_S == 3.0


# -- complexity (ruff's C901, max 15 in pyproject) -------------------------------------------------
@pytest.mark.parametrize("path", ["datasets/imagefolder.py", "training/trainer.py"])
def test_within_the_complexity_limit(path: str) -> None:
    """build_from_listing was 17, Trainer.train_epoch 17: split, behaviour identical."""
    import subprocess
    import sys

    pytest.importorskip("ruff")
    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "C901", "--output-format", "concise"]
        + [path],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
