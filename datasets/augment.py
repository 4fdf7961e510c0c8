"""Transforms on the canonical uint8 squares, and the per-item seeds that make them reproducible.

Training augmentation (random resized crop, flips, 90-degree rotations, a one-matrix colour
jitter) works on uint8 tensors before `Normalize`. Each item's random draws come from a
generator seeded with (run seed, epoch, sample index) — `augmentation_seeds`,
`seeded_augment` — never from a worker's RNG, so the DataLoader worker count does not change
what the model sees. Split out of `images.py`: the synthetic dataset and the training loaders
use these without image files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENT_SALT = 0xA06E  # keeps augmentation seeds apart from other draws keyed on the same seed


# ---------------------------------------------------------------- per-sample augmentation seeds


_M64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A counter-based 64-bit mixer (SplitMix64 finaliser), element-wise on uint64."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def augmentation_seeds(key: Sequence[int], indices: np.ndarray) -> np.ndarray:
    """One 63-bit seed per position of `indices`: a pure function of (key, index, repeat).

    `key` is e.g. (run seed, epoch); `repeat` counts earlier occurrences of the same index in
    this pass, so an over-sampled image gets a fresh draw each time it appears. The seeds do
    not depend on batch size, worker count or which process reads the item.
    """
    indices = np.asarray(indices, dtype=np.int64)
    base = np.random.SeedSequence([AUGMENT_SALT, *(int(k) & _M64 for k in key)])
    b0, b1 = (np.uint64(v) for v in base.generate_state(2, np.uint64))
    repeat = np.zeros(len(indices), dtype=np.int64)
    if len(indices):
        order = np.argsort(indices, kind="stable")
        ranked = indices[order]
        starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
        run_start = np.repeat(starts, np.diff(np.r_[starts, len(ranked)]))
        repeat[order] = np.arange(len(ranked)) - run_start
    h = _splitmix64(indices.astype(np.uint64) ^ b0)
    h = _splitmix64(h ^ (repeat.astype(np.uint64) + b1))
    return (h >> np.uint64(1)).astype(np.int64)


def split_item(item: Any) -> tuple[int, int | None]:
    """A dataset item key: a plain index, or (index, augmentation seed) from a seeded sampler."""
    if isinstance(item, tuple | list):
        return int(item[0]), int(item[1])
    return int(item), None


def seeded_augment(
    augment: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, seed: int | None
) -> torch.Tensor:
    """Apply `augment` with its random draws taken from a generator seeded by `seed`.

    torchvision's transforms draw from torch's global CPU generator; it is forked and seeded
    here, so the draws depend on the item alone (not on the worker that reads it, nor on how
    many items that worker read before) and the caller's global RNG stream is left untouched.
    Without a seed (direct indexing outside a seeded loader) the global generator is used.
    """
    if seed is None:
        return augment(x)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return augment(x)


# ---------------------------------------------------------------- transforms


class RandomRot90(torch.nn.Module):
    """Rotate a CHW tensor by a random multiple of 90 degrees (exact, cheap on uint8)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(4, ()).item())
        return torch.rot90(x, k, dims=(-2, -1)) if k else x


class Normalize:
    """uint8 CHW (or NCHW) -> float32 normalised with the ImageNet statistics timm models expect."""

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        self.scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(-1, 1, 1)
        self.shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)]).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32).mul_(self.scale).sub_(self.shift)


_LUMA = np.array([0.299, 0.587, 0.114])


_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def _mat3(*ms: np.ndarray) -> np.ndarray:
    """Product of 3x3 matrices by plain loops: no BLAS thread pool for 27 multiplications."""
    out = ms[0]
    for m in ms[1:]:
        out = np.einsum("ij,jk->ik", out, m)
    return out


class ColorJitter(torch.nn.Module):
    """Brightness, contrast, saturation and hue jitter as one 3x3 colour matrix on uint8 RGB.

    torchvision's ColorJitter converts to HSV for hue (about 3 ms per 224x224 image on one
    core). Brightness, contrast and saturation are affine in RGB and match torchvision to
    within one grey level; hue becomes a rotation about the grey axis in YIQ space (a close,
    smooth stand-in for the HSV shift). All four compose into one matrix and offset applied in
    a single pass (about 0.2 ms), in NumPy: element-wise NumPy never starts threads, and thread
    pools (BLAS, OpenMP) cost milliseconds per image when the cores are busy. Factors are
    drawn from the same ranges as torchvision's, from torch's generator (seeded per item by
    `seeded_augment`).
    """

    def __init__(
        self,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.02,
    ) -> None:
        super().__init__()
        self.brightness, self.contrast = brightness, contrast
        self.saturation, self.hue = saturation, hue

    @staticmethod
    def _factor(spread: float) -> float:
        return float(torch.empty(()).uniform_(1.0 - spread, 1.0 + spread)) if spread else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = self._factor(self.brightness), self._factor(self.contrast)
        s = self._factor(self.saturation)
        h = float(torch.empty(()).uniform_(-self.hue, self.hue)) if self.hue else 0.0
        sat = s * np.eye(3) + (1.0 - s) * np.outer(np.ones(3), _LUMA)
        # rotating I/Q by -2*pi*h turns hues the way torchvision's adjust_hue(h) does
        cos, sin = np.cos(2 * np.pi * h), np.sin(-2 * np.pi * h)
        rot = np.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
        m = ((c * b) * _mat3(_YIQ2RGB, rot, _RGB2YIQ, sat)).astype(np.float32)
        flat = x.reshape(3, -1).numpy().astype(np.float32)
        grey_mean = float(np.dot(_LUMA, flat.mean(axis=1)))
        offset = np.float32((1.0 - c) * b * grey_mean + 0.5)  # contrast: towards mean grey
        out = m[:, 0:1] * flat[0]
        out += m[:, 1:2] * flat[1]
        out += m[:, 2:3] * flat[2]
        out += offset
        np.clip(out, 0.0, 255.0, out=out)
        return torch.from_numpy(out.astype(np.uint8)).reshape(x.shape)


def train_augmentation(image_size: int) -> v2.Compose:
    """Dermoscopy augmentation on uint8 tensors (runs before normalisation)."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(0.35, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            RandomRot90(),
            ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
        ]
    )
