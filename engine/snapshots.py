"""Snapshot ensembles as the source of MC draws (`--mc-source snapshots`).

Each round of a run is one cosine learning-rate cycle (the learner restarts its schedule at
every round), so the best-validation weights of successive rounds form a snapshot ensemble
(Huang et al., 2017). With this source every MC score (BALD, predictive entropy, variation
ratio, std, info-density's MC part, BatchBALD) takes as its T draws the deterministic
(eval-mode) softmax outputs of the ensemble's members instead of T dropout masks.

Members of a query's ensemble, oldest first:

* the best-validation weights of each of the last S = `--snapshots` completed rounds;
* with fewer than two completed rounds (the first query of a round schedule comes after
  round 0 only), the ensemble is topped up to two members with the best weights so far of
  the round in progress, else with the current weights; at a round boundary those are the
  finished round's last weights. So T = max(2, min(S, completed rounds)).
  When two members are identical (a round whose best epoch is its last, e.g. one epoch per
  round) every draw is the same: BALD, variation ratio and std are 0 for every candidate
  (the selection then follows the tie order) and `entropy` is the model's own entropy.

`mc_samples` and `mc_mode` are ignored in this mode: T is the number of members.

Memory: the kept weights are CPU copies, (S + 1) x the model's state size (the +1 is the
best so far of the round in progress), and they are part of the loop's checkpoint, so
`--resume` scores exactly like an uninterrupted run; every checkpoint grows by as much. CPU
memory rather than files in the run folder: a checkpoint stays one self-contained file,
written atomically and rotated by the existing machinery, with no second set of files whose
lifetime must follow it. While a query scores, the members are also on the model's device
(S x the state size, freed with the scoring context). The model itself is never modified:
each member's weights enter through `torch.func.functional_call` on the live module.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import functional_call

from .errors import FlexsampleError

if TYPE_CHECKING:
    from .interfaces import ContractModule

MC_SOURCES = ("dropout", "snapshots")

State = Mapping[str, torch.Tensor]


def check_mc_source(mc_source: str, snapshots: int) -> None:
    """FlexsampleError (one line) for an unknown source or fewer than 2 kept snapshots."""
    if mc_source not in MC_SOURCES:
        raise FlexsampleError(
            f"unknown --mc-source '{mc_source}'; accepted: {', '.join(MC_SOURCES)}"
        )
    try:
        count = None if isinstance(snapshots, bool) else operator.index(snapshots)
    except TypeError:
        count = None
    if count is None or count < 2:
        raise FlexsampleError(f"--snapshots must be an integer >= 2, got {snapshots!r}")


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's tensor state (parameters and persistent buffers)."""
    return {
        k: v.detach().to("cpu", copy=True)
        for k, v in model.state_dict().items()
        if isinstance(v, torch.Tensor)
    }


class SnapshotKeeper:
    """The best-validation weights of the last `keep` completed rounds, kept in CPU memory.

    The loop reports every validated epoch (`end_epoch`); `members` builds a query's
    ensemble (see the module docstring for the rule); `state_dict` holds everything a
    resumed run needs to build the same ensembles.
    """

    def __init__(self, keep: int) -> None:
        check_mc_source("snapshots", keep)
        self.keep = operator.index(keep)
        self.rounds: list[tuple[int, dict[str, torch.Tensor]]] = []  # (round, best weights)
        self.current_round = -1  # the round whose best so far is held below
        self.current_best: tuple[float, dict[str, torch.Tensor]] | None = None

    def end_epoch(
        self, round_index: int, balanced_accuracy: float, model: nn.Module, round_done: bool
    ) -> None:
        """Keep the weights if they are the round's best so far; close the round when done."""
        if round_index != self.current_round:
            self.current_round, self.current_best = int(round_index), None
        if self.current_best is None or balanced_accuracy > self.current_best[0]:
            self.current_best = (float(balanced_accuracy), cpu_state(model))
        if round_done:
            self.rounds.append((self.current_round, self.current_best[1]))
            del self.rounds[: -self.keep]
            self.current_best = None

    def members(self, model: nn.Module) -> list[State]:
        """The weights of a query's ensemble, oldest first; at least 2 (module docstring)."""
        out: list[State] = [state for _, state in self.rounds]
        if len(out) < 2 and self.current_best is not None:
            out.append(self.current_best[1])
        while len(out) < 2:
            out.append(model.state_dict())  # live tensors: scoring does not change them
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "keep": self.keep,
            "rounds": [{"round": r, "model": dict(s)} for r, s in self.rounds],
            "current_round": self.current_round,
            "current_best": None
            if self.current_best is None
            else {"val": self.current_best[0], "model": dict(self.current_best[1])},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["keep"]) != self.keep:
            raise FlexsampleError(
                f"checkpoint was made with snapshots={state['keep']}, this run has {self.keep}"
            )
        self.rounds = [(int(r["round"]), dict(r["model"])) for r in state["rounds"]]
        self.current_round = int(state["current_round"])
        best = state["current_best"]
        self.current_best = None if best is None else (float(best["val"]), dict(best["model"]))


class _Probs(nn.Module):
    """embed then head of the contract model as one forward, for functional_call.

    As `ScoringContext.probs`: the embedding under the caller's autocast, the head and the
    softmax in float32.
    """

    def __init__(self, inner: ContractModule) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.inner.embed(x)
        head = self.inner.head
        with torch.autocast(f.device.type, enabled=False):
            bias = None if head.bias is None else head.bias.float()
            logits = nn.functional.linear(f.float(), head.weight.float(), bias)
        return torch.softmax(logits, dim=-1)


def device_members(
    model: nn.Module, members: Sequence[State], device: torch.device
) -> list[dict[str, torch.Tensor]]:
    """Each member's parameters and buffers on `device`, named as in `model` (one name per
    tied tensor, so functional_call keeps ties). A member missing one of them is refused."""
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    persistent = set(model.state_dict())
    names = [n for n in names if n in persistent]
    out = []
    for i, state in enumerate(members):
        missing = [n for n in names if n not in state]
        if missing:
            raise FlexsampleError(
                f"snapshot {i} has no weights for {missing[0]} ({len(missing)} missing): "
                "snapshots must come from the scored model's own state_dict()"
            )
        out.append({n: state[n].to(device, non_blocking=True) for n in names})
    return out


def ensemble_probs(
    model: ContractModule, weights: Sequence[Mapping[str, torch.Tensor]], x: torch.Tensor
) -> Iterator[torch.Tensor]:
    """Softmax outputs (B, C) float32 of each member on the batch `x`: one backbone pass per
    member, the model's own tensors untouched. The caller holds inference and eval mode."""
    wrapper = _Probs(model)
    for w in weights:
        params = {f"inner.{k}": v for k, v in w.items()}
        yield functional_call(wrapper, params, (x,), strict=False)
