"""Ctrl-C and SIGTERM at any moment: no traceback, exit 130 / 143, the resume command printed,
a checkpoint that resumes. Subprocesses (a real signal), kept few."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flexsample.engine import faults

from .conftest import TINY


@pytest.fixture(autouse=True)
def _fresh_faults(monkeypatch):
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.delenv(faults.ENV, raising=False)


def _start(out: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    return subprocess.Popen(
        [sys.executable, "-m", "flexsample", "run", *TINY, "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=out.parent,
    )


def test_importing_the_package_and_the_cli_package_does_not_import_torch():
    code = (
        "import sys, flexsample, flexsample.cli; "
        "print('torch' in sys.modules, flexsample.__version__ != '')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["False", "True"], res.stdout + res.stderr


def test_lazy_public_names_still_work():
    import flexsample

    assert flexsample.Pool.__name__ == "Pool"
    assert "register_estimator" in dir(flexsample)
    with pytest.raises(AttributeError):
        flexsample.no_such_name  # noqa: B018


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_start_up(tmp_path, sig, code):
    out = tmp_path / "run"
    proc = _start(out)
    time.sleep(0.6)  # python is up; the imports of typer, torch and the app take seconds
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and ("interrupted" in lines[0] or "terminated" in lines[0]), stderr
    assert not out.exists()


def test_sigterm_mid_run_checkpoints_and_prints_the_resume_command(cli, tmp_path):
    out = tmp_path / "run"
    proc = _start(out, "--epochs-per-round", "8")
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"terminated (SIGTERM); resume with: flexsample run --out {out} --resume"
    )
    assert not (out / "results.json").exists()
    res = cli("run", "--out", out, "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rounds] == [0, 1, 2]
    assert sum(r["epochs"] for r in rounds) == 24


def test_ctrl_c_mid_run_exits_130_with_the_resume_command(cli, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv(faults.ENV, "train-epoch:interrupt@3")
    res = cli("run", *TINY, "--out", out)
    assert res.exit_code == 130, res.output
    assert res.stderr.strip() == f"interrupted; resume with: flexsample run --out {out} --resume"
    assert (out / "checkpoint.pt").exists()


_SWALLOW = """
import os, signal, sys
from flexsample.cli import Terminated, install_signal_handlers, raise_pending_interrupt
install_signal_handlers()

class Finalised:
    def __del__(self):  # an exception raised here cannot propagate: Python "ignores" it
        os.kill(os.getpid(), signal.{sig})
        for _ in range(10000):
            pass

obj = Finalised()
del obj
print("went on", flush=True)
try:
    raise_pending_interrupt()
except KeyboardInterrupt as exc:
    print("raised", type(exc).__name__, flush=True)
raise_pending_interrupt()  # nothing pending any more
print("once", flush=True)
"""


@pytest.mark.parametrize(
    ("sig", "name"), [("SIGINT", "KeyboardInterrupt"), ("SIGTERM", "Terminated")]
)
def test_an_interrupt_swallowed_by_a_finaliser_is_raised_again_without_a_traceback(sig, name):
    """Ctrl-C landing inside a C extension's callback (pydantic-core building a validator
    during start-up did this) is reported by Python as "Exception ignored" and lost; the
    handlers keep it pending, print nothing, and raise it at the next safe point."""
    res = subprocess.run(
        [sys.executable, "-c", _SWALLOW.format(sig=sig)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:3] == ["went on", f"raised {name}", "once"], res.stdout
    assert res.stderr == "", res.stderr


def test_an_ordinary_unraisable_exception_is_still_reported():
    code = (
        "from flexsample.cli import install_signal_handlers\n"
        "install_signal_handlers()\n"
        "class F:\n"
        "    def __del__(self):\n"
        "        raise ValueError('boom in a finaliser')\n"
        "f = F(); del f\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "boom in a finaliser" in res.stderr and "Exception ignored" in res.stderr


_SAVE_CUT = """
import os, signal, sys
import torch
from flexsample.cli import Terminated, install_signal_handlers
from flexsample.engine import checkpoint as ck

install_signal_handlers()
at, calls = int(sys.argv[2]), [0]
write = ck._FaultWriter.write

def write_and_signal(self, data):  # the signal lands inside torch.save's C++ writer
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), signal.{sig})
    return write(self, data)

ck._FaultWriter.write = write_and_signal
try:
    ck.save_atomic(sys.argv[1], {{"w": torch.arange(1000), "b": torch.ones(10)}})
    print("not interrupted")
except KeyboardInterrupt as exc:
    got = ck.load_checkpoint(sys.argv[1])
    print(type(exc).__name__, "after the save", got["w"].sum().item(), sorted(got))
"""


@pytest.mark.parametrize("at", [1, 3, 16])
@pytest.mark.parametrize(
    ("sig", "name"), [("SIGINT", "KeyboardInterrupt"), ("SIGTERM", "Terminated")]
)
def test_a_signal_during_a_checkpoint_write_arrives_after_it(tmp_path, sig, name, at):
    """Raised inside torch.save's C++ writer, the interrupt came out as a RuntimeError
    ("unexpected pos") or aborted the process; now it is held until the checkpoint is in
    place, then raised as itself."""
    path = tmp_path / "checkpoint.pt"
    res = subprocess.run(
        [sys.executable, "-c", _SAVE_CUT.format(sig=sig), str(path), str(at)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{name} after the save 499500 ['b', 'w']", res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp file


def test_deferred_interrupts_hold_then_deliver_and_restore_handlers():
    from flexsample.engine.interrupts import deferred_interrupts

    before = signal.getsignal(signal.SIGINT)
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # a handler would have run by now
            reached.append("end of block")
    assert reached == ["end of block"]
    assert signal.getsignal(signal.SIGINT) is before
    # an ignored signal stays ignored, and nothing is delivered afterwards
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with deferred_interrupts():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, old)
