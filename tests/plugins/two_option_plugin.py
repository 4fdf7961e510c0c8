"""A plugin estimator with two options of its own (tests/test_component_options.py)."""

from __future__ import annotations

from typing import Annotated

import numpy as np

from flexsample import Estimator, register_estimator
from flexsample.engine.options import opt


@register_estimator("test-margin-power")
class MarginPower(Estimator):
    """(1 - top-2 margin) ** power + offset (a test plugin with two options)."""

    needs = frozenset({"probs"})

    def __init__(
        self,
        power: Annotated[float, opt("exponent of the margin term", gt=0, le=10)] = 2.0,
        offset: Annotated[int, opt("added to every score", ge=0, le=100)] = 0,
        seed: int = 7,  # a name the run also has: it must not receive the run's seed
    ) -> None:
        self.power, self.offset, self.seed = power, offset, seed
        MarginPower.last = self  # the test reads what the run built

    def score(self, ctx, candidates: np.ndarray) -> np.ndarray:
        p = np.sort(ctx.probs(candidates), axis=1)
        return (1.0 - (p[:, -1] - p[:, -2])) ** self.power + self.offset


from flexsample.workflows.recipes import RECIPES, Recipe  # noqa: E402


@RECIPES.register("test-quick")
class QuickRecipe(Recipe):
    """A plugin recipe: entropy scoring over a short budget (tests/test_recipes.py)."""

    def __init__(self, rounds: Annotated[int, opt("rounds of the bundle", ge=1)] = 2) -> None:
        self.rounds = rounds

    def values(self, given):
        return {"estimator": "entropy", "rounds": self.rounds, "epochs_per_round": 1}
