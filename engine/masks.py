"""Counter-based dropout masks: a pure function of (seed, step, sample index, draw, unit).

No generator state is consumed, so batch size, ordering and sharding never change a mask.
The hash is a 32-bit integer mixer evaluated in int64 tensors (products masked back to
32 bits, so wrap-around in int64 does not matter) and runs on the model's device.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective avalanche mixer on 32-bit values held in int64 tensors."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def _key(*parts: int) -> int:
    """Fold integers into one 32-bit key (pure Python, same mixer)."""
    h = 0
    for p in parts:
        h = int(mix32(torch.tensor((h ^ (p & _M32)) + _GOLDEN, dtype=torch.int64)))
    return h


def draw_unit_hash(seed: int, step: int, draws: int, units: int, device: torch.device) -> torch.Tensor:
    """(draws, units) hashes of (seed, step, draw, unit), shared by all samples."""
    base = _key(seed, step)
    t = torch.arange(draws, device=device, dtype=torch.int64)[:, None]
    d = torch.arange(units, device=device, dtype=torch.int64)[None, :]
    return mix32(mix32((t * _GOLDEN) ^ base) + d)


def sample_hash(indices: torch.Tensor) -> torch.Tensor:
    """Per-sample 32-bit hash of global indices (int64 tensor)."""
    return mix32(mix32(indices.to(torch.int64) & _M32) ^ ((indices.to(torch.int64) >> 32) & _M32))


def keep_masks(
    seed: int,
    step: int,
    indices: torch.Tensor,
    draws: int,
    units: int,
    p: float,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """(draws, len(indices), units) boolean keep-masks with P(keep) = 1 - p.

    `base` (from `draw_unit_hash`) may be passed in to reuse it across batches.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), got {p}")
    if base is None:
        base = draw_unit_hash(seed, step, draws, units, indices.device)
    h = mix32(base[:, None, :] ^ sample_hash(indices)[None, :, None])
    threshold = int(round((1.0 - p) * 2**32))
    return h < threshold
