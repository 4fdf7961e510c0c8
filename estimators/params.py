"""Option types shared by several estimators: one declaration of each option's type, range and
help, so `mc_samples` means and accepts the same in mcdropout, info-density and batchbald."""

from __future__ import annotations

from typing import Annotated, Literal

from flexsample.engine.options import opt

MCSamples = Annotated[int, opt("MC-dropout draws T", ge=2, le=10_000)]
MCScore = Annotated[
    Literal["bald", "entropy", "variation-ratio", "std"],
    opt("MC-dropout score: bald, entropy, variation-ratio or std"),
]
MCMode = Annotated[
    Literal["head", "full"],
    opt("MC-dropout mode: head (backbone once) or full (T complete passes)"),
]
Knn = Annotated[int, opt("neighbours k of the kNN search", ge=1, le=10_000)]
IVFThreshold = Annotated[
    int, opt("use an IVF index above this many samples", ge=1, le=1_000_000_000)
]
