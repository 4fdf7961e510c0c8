"""Recipes: named bundles of option values (`--recipe paper`).

A recipe is the bottom layer of a configuration: defaults < recipe < config file < flags, so
anything the user gives overrides it. It is a registered component like the others (entry-point
group `flexsample.recipes`, options declared on its constructor, `flexsample list recipe`), and
it sees what the user gave (`given`: the merged file and flags) so that it can choose a model
for the dataset. Epoch counts that must follow the run's epoch budget are fractions of it in
the components themselves (the `plateau` policy's warm-up, patience and interval).

Built-ins:

* `paper`: Flexible Sampling as its authors' trainer runs it (github.com/PyJulie/FlexSampling,
  `flexsampling/core/`): prototype anchors by Euclidean distance, a warm-up on the anchors, a
  query on a validation plateau or every few epochs, quotas that follow each class's remaining
  pool scaled by its difficulty, MC-dropout BALD with T = 10, class-aware sampling and a
  class-balanced focal loss on the subset, SGD with one step-level cosine over the budget, no
  forced full set at the end. Epoch counts keep the authors' proportions of their 120 epochs.
* `paper-control`: the same training recipe on the full set from the first epoch (the
  authors' own control).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from flexsample.engine.options import opt
from flexsample.engine.registry import Registry

RECIPES: Registry[Any] = Registry("recipe", "flexsample.recipes", builtins=__name__)

PAPER_EPOCHS = 120  # the authors' total epochs
PAPER_ROUNDS, PAPER_EPOCHS_PER_ROUND = 6, 20  # 120 epochs in our rounds x epochs-per-round form
ISIC = ("isic2019", "isic-archive14")


class Recipe:
    """Base: `values(given)` is the layer the recipe adds under the user's own values."""

    name = ""

    def values(self, given: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


def training_values(given: Mapping[str, Any], pretrained: bool) -> dict[str, Any]:
    """What `paper` and `paper-control` share: the authors' optimisation, sampler and loss, and
    on ISIC their model."""
    out: dict[str, Any] = {
        "rounds": PAPER_ROUNDS,
        "epochs_per_round": PAPER_EPOCHS_PER_ROUND,
        "optimizer": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "batch_size": 32,
        "restart": "none",
        "cosine": "steps",
        "checkpoint_on": "val",
        "lr_subset_scale": 0.0,
        "mixup": 0.0,
        "dropout": 0.1,  # the authors' MC-dropout rate (they train without; ours trains with it)
        "sampler": "class-aware",
        "loss": "cb-focal",
        "loss_options": {"cb_beta": 0.9999, "focal_gamma": 1.0},
    }
    if given.get("dataset") in ISIC:
        out.update(  # the dataset named with its options, which go with it
            {
                "dataset": given["dataset"],
                "backbone": "resnet50",
                "dataset_options": {"image_size": 224},
            }
        )
        if pretrained:
            out["pretrained"] = "imagenet"
    return out


@RECIPES.register("paper")
class PaperRecipe(Recipe):
    """Flexible Sampling as the authors' trainer runs it (see `flexsample list recipe`)."""

    def __init__(
        self,
        pretrained: Annotated[
            bool,
            opt(
                "on ISIC, start from the authors' ImageNet weights (timm's resnet50, downloaded "
                "once into the Hugging Face cache)"
            ),
        ] = True,
    ) -> None:
        self.pretrained = pretrained

    def values(self, given: Mapping[str, Any]) -> dict[str, Any]:
        out = training_values(given, self.pretrained)
        out.update(
            {
                "anchors": "prototype",
                "anchors_options": {
                    "anchor_scaling": 0.1,
                    "anchor_floor": 2,
                    "distance": "euclidean",
                },
                "estimator": "mcdropout",
                "estimator_options": {"mc_samples": 10, "mc_score": "bald", "mc_mode": "head"},
                "acquisition": "topk",
                "policy": "plateau",
                "policy_options": {  # the authors' 20, 7 and 5 of 120 epochs, as fractions
                    "warmup_fraction": 20 / PAPER_EPOCHS,
                    "patience_fraction": 7 / PAPER_EPOCHS,
                    "interval_fraction": 5 / PAPER_EPOCHS,
                    "query_fraction": 0.1,
                    "fill_last": False,
                },
                "allocation": "remaining-difficulty",
                "allocation_options": {"query_fraction": 0.1},
            }
        )
        return out


@RECIPES.register("paper-control")
class PaperControlRecipe(PaperRecipe):
    """The paper recipe's training on the full set from the first epoch (the authors' control)."""

    def values(self, given: Mapping[str, Any]) -> dict[str, Any]:
        out = training_values(given, self.pretrained)
        out.update(
            {
                "policy": "full",
                "anchors": "random",
                "estimator": "random",
                "allocation": "proportional",
            }
        )
        return out
