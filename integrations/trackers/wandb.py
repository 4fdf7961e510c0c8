"""Weights & Biases: one W&B run per flexsample run, offline unless the user is logged in."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from flexsample.engine.options import opt
from flexsample.engine.registry import TRACKERS

from . import DEFAULT_PROJECT, Tracker, check_folder, check_reachable


def wandb_mode() -> str | None:
    """The W&B mode to ask for: W&B's own choice (WANDB_MODE, `wandb offline`, online) when the
    user is logged in or set WANDB_MODE; otherwise offline (sync later with `wandb sync`).

    Looks for credentials only locally (WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, the netrc
    entry `wandb login` writes); nothing here touches the network.
    """
    if os.environ.get("WANDB_MODE"):
        return None
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return None
    return None if _wandb_netrc_key() else "offline"


def _wandb_netrc_key() -> bool:
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    try:
        from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth

        return bool(read_netrc_auth(host=base))
    except ImportError:  # another wandb version: read the netrc file as W&B writes it
        import netrc
        from urllib.parse import urlparse

        path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
        try:
            return netrc.netrc(path).authenticators(urlparse(base).hostname or "") is not None
        except (OSError, netrc.NetrcParseError):
            return False
    except Exception:
        return False  # a malformed entry: W&B would refuse it too


@TRACKERS.register("wandb")
class WandbTracker(Tracker):
    """A W&B run (project WANDB_PROJECT or 'flexsample', group = the bench): config, metrics
    against `epoch`, histograms, test metrics in the summary, the run folder as an artifact.

    Offline unless the user is logged in (see `wandb_mode`); an offline run lies in
    `<dir>/wandb/offline-run-*` and uploads with `wandb sync`.
    """

    name = "wandb"
    requires = ("wandb",)
    extra = "wandb"

    def __init__(
        self,
        project: Annotated[
            str | None,
            opt(f"W&B project [default: WANDB_PROJECT, else '{DEFAULT_PROJECT}']", min_length=1),
        ] = None,
        **runtime: Any,
    ) -> None:
        super().__init__(**runtime)
        self.wandb = self.check_installed()[0]
        self.project = project
        # W&B's own WANDB_DIR wins; else the run folder (or --log-dir's folder for this run)
        self.wandb_dir = None if os.environ.get("WANDB_DIR") else self.folder
        self.mode = wandb_mode()
        self.run: Any = None

    def check_destination(self) -> None:
        """Its folder (WANDB_DIR, or this run's) is writable; with WANDB_MODE=online, W&B's
        server (WANDB_BASE_URL) answers. An offline run needs no network, and W&B's own choice
        (a logged-in user without WANDB_MODE) is left to W&B."""
        if self.wandb_dir is not None:
            self._check_folder(self.wandb_dir)
        else:
            check_folder(
                self.name, Path(os.environ["WANDB_DIR"]), "set WANDB_DIR to another folder"
            )
        if os.environ.get("WANDB_MODE", "").strip().lower() == "online":
            check_reachable(
                self.name,
                os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai",
                "check the network, or log offline with WANDB_MODE=offline (`wandb sync` later)",
                what="W&B server",
            )

    def _start(self) -> None:
        options: dict[str, Any] = {}
        if "WANDB_CONSOLE" not in os.environ:
            options["console"] = "off"  # progress bars are no log; the run folder has the rest
        if self.wandb_dir is not None:
            self.wandb_dir.mkdir(parents=True, exist_ok=True)
        self.run = self.wandb.init(
            project=self.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            name=self.run_name,
            group=self.group,
            config=self.config,
            dir=None if self.wandb_dir is None else str(self.wandb_dir),
            mode=self.mode,
            reinit="create_new",  # bench cells in one process each get their own run
            settings=self.wandb.Settings(**options),
        )
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")

    def _log_metrics(self, section: str, epoch: int, metrics: dict[str, float | int]) -> None:
        self.run.log({**metrics, "epoch": epoch})

    def _log_histogram(self, tag: str, values: np.ndarray, epoch: int, step: int) -> None:
        self.run.log({tag: self.wandb.Histogram(values), "epoch": epoch})

    def _log_final(self, metrics: dict[str, float | int]) -> None:
        self.run.summary.update(metrics)

    def _log_files(self, run_dir: Path, files: list[Path]) -> None:
        if not files:
            return
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"run-{self.run_name}")[:120]
        artifact = self.wandb.Artifact(name, type="run-folder")
        for path in files:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def _finish(self, status: str) -> None:
        if self.run is not None:  # None: its start failed (that error is the one shown)
            self.run.finish(exit_code=0 if status == "FINISHED" else 1)
