"""Counter-based dropout masks: a pure function of (seed, step, sample index, draw, unit).

No generator state is consumed, so batch size, ordering and sharding never change a mask.

Layout of the hash, chosen so that the per-element work is small:

* `draw_unit_hash(seed, step, T, D)`: a fully mixed 32-bit hash per (draw, unit), computed
  once per query step (T x D values, shared by every sample);
* `sample_hash(indices)`: a fully mixed 32-bit hash per sample;
* per element, `finalize(base[t, d] ^ sample[i])`: two multiply / xor-shift rounds of the
  lowbias32 mixer. Its first xor-shift round is skipped because it is linear over GF(2) and
  therefore adds nothing on inputs that are already uniformly mixed and differ between
  samples by an xor; the multiplies are what decorrelates two samples' masks.

The per-element rounds run in place on int32 tensors (two's complement wrap-around is
arithmetic mod 2^32; logical right shifts are arithmetic shifts with the sign bits masked
off), which is several times cheaper than int64 on a CPU and native on a GPU.
A unit is kept when its hash, read as a signed int32, is below
-2^31 + round((1 - p) * 2^32), so P(keep) = 1 - p up to 2^-32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
_C1 = 0x7FEB352D
_C2 = 0x846CA68B


def _signed(c: int) -> int:
    """The int32 value with the same 32 bits as the unsigned `c`."""
    c &= _M32
    return c - (1 << 32) if c >= 1 << 31 else c


def mix32_int(x: int) -> int:
    """lowbias32 on a Python int (the reference the tensor versions are tested against)."""
    x &= _M32
    x ^= x >> 16
    x = (x * _C1) & _M32
    x ^= x >> 15
    x = (x * _C2) & _M32
    return x ^ (x >> 16)


def finalize_int(x: int) -> int:
    """The per-element rounds (lowbias32 without its first xor-shift) on a Python int."""
    x = (x * _C1) & _M32
    x ^= x >> 15
    x = (x * _C2) & _M32
    return x ^ (x >> 16)


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on 32-bit values held in int64 tensors (results in [0, 2^32))."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * _C1) & _M32
    x = x ^ (x >> 15)
    x = (x * _C2) & _M32
    return x ^ (x >> 16)


def _key(*parts: int) -> int:
    """Fold integers into one 32-bit key (pure Python)."""
    h = 0
    for p in parts:
        h = mix32_int((h ^ (p & _M32)) + _GOLDEN)
    return h


def to_int32(x: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2^32) -> int32 tensor holding the same 32 bits."""
    x = x & _M32
    return torch.where(x >= 1 << 31, x - (1 << 32), x).to(torch.int32)


def draw_unit_hash(
    seed: int, step: int, draws: int, units: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(draws, units) int32 hashes of (seed, step, draw, unit), shared by all samples."""
    base = _key(seed, step)
    t = torch.arange(draws, device=device, dtype=torch.int64)[:, None]
    d = torch.arange(units, device=device, dtype=torch.int64)[None, :]
    return to_int32(mix32(mix32((t * _GOLDEN) ^ base) + d))


def sample_hash(indices: torch.Tensor) -> torch.Tensor:
    """Per-sample int32 hash of global (int64) indices."""
    i = indices.to(torch.int64)
    return to_int32(mix32(mix32(i & _M32) ^ ((i >> 32) & _M32)))


def finalize_(h: torch.Tensor) -> torch.Tensor:
    """The per-element mixing rounds, in place on an int32 tensor (returns it)."""
    buf = torch.empty_like(h)
    h.mul_(_signed(_C1))
    torch.bitwise_right_shift(h, 15, out=buf).bitwise_and_(0x1FFFF)
    h.bitwise_xor_(buf)
    h.mul_(_signed(_C2))
    torch.bitwise_right_shift(h, 16, out=buf).bitwise_and_(0xFFFF)
    return h.bitwise_xor_(buf)


def keep_threshold(p: float) -> int:
    """The signed int32 bound below which a unit is kept (P(keep) = 1 - p)."""
    return min(-(1 << 31) + int(round((1.0 - p) * 2**32)), (1 << 31) - 1)


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
    if p == 0.0:
        return torch.ones((draws, len(indices), units), dtype=torch.bool, device=base.device)
    h = torch.bitwise_xor(base[:, None, :], sample_hash(indices).to(base.device)[None, :, None])
    return finalize_(h) < keep_threshold(p)


class MaskSampler:
    """The same masks as `keep_masks`, written into buffers reused from batch to batch.

    Why: freshly allocated multi-megabyte tensors are page-faulted in on every batch, which
    on a CPU costs more than the hashing itself. Views returned by `keep` and `workspace`
    stay valid until the next call.
    """

    def __init__(
        self, seed: int, step: int, draws: int, units: int, p: float, device: torch.device | str
    ) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.draws, self.units, self.p = int(draws), int(units), float(p)
        self.device = torch.device(device)
        self.base = draw_unit_hash(seed, step, draws, units, self.device)
        self.threshold = keep_threshold(p)
        self._bufs: dict[str, torch.Tensor] = {}

    def _view(self, name: str, n: int, dtype: torch.dtype) -> torch.Tensor:
        size = self.draws * n * self.units
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < size or buf.dtype != dtype:
            buf = torch.empty(size, dtype=dtype, device=self.device)
            self._bufs[name] = buf
        return buf[:size].view(self.draws, n, self.units)

    def workspace(self, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A reusable (draws, n, units) buffer for the caller's masked features."""
        return self._view("work", n, dtype)

    def keep(self, indices: torch.Tensor) -> torch.Tensor:
        """(draws, len(indices), units) boolean keep-mask (a view into a reused buffer)."""
        n = len(indices)
        out = self._view("keep", n, torch.bool)
        if self.p == 0.0:
            return out.fill_(True)
        h = self._view("hash", n, torch.int32)
        tmp = self._view("tmp", n, torch.int32)
        s = sample_hash(indices).to(self.device)
        torch.bitwise_xor(self.base[:, None, :], s[None, :, None], out=h)
        h.mul_(_signed(_C1))
        torch.bitwise_right_shift(h, 15, out=tmp).bitwise_and_(0x1FFFF)
        h.bitwise_xor_(tmp)
        h.mul_(_signed(_C2))
        torch.bitwise_right_shift(h, 16, out=tmp).bitwise_and_(0xFFFF)
        h.bitwise_xor_(tmp)
        return torch.lt(h, self.threshold, out=out)


# -- full-mode MC dropout: every dropout layer of a model, masks hashed like the head's --------
_HEAD_LAYER = 0xFEA7  # the feature dropout before the head (not a module of the model)
_ALPHA = 1.7580993408473766  # SELU's -alpha * scale: the value alpha dropout drops to
_CHANNEL_DROPOUTS = (
    torch.nn.Dropout1d,
    torch.nn.Dropout2d,
    torch.nn.Dropout3d,
    torch.nn.FeatureAlphaDropout,
)


def draw_row_hash(key: int, draw: int, units: int, device: torch.device | str) -> torch.Tensor:
    """(units,) int32 hashes of (key, draw, unit): row `draw` of `draw_unit_hash` for `key`."""
    d = torch.arange(units, device=device, dtype=torch.int64)
    return to_int32(mix32(mix32_int(((draw * _GOLDEN) & _M32) ^ key) + d))


class HashedDropout:
    """Counter-based masks for full-mode passes: a pure function of (seed, step, sample index,
    draw, layer, element), the layer being the dropout module's position in `model.modules()`
    and the call's position among that module's calls in one forward pass.

    Why: seeding a torch generator per batch made full-mode scores depend on the score batch
    size and the candidates' order; hashing makes every mask independent of both.
    """

    def __init__(self, seed: int, step: int, device: torch.device | str) -> None:
        self.seed, self.step, self.device = int(seed), int(step), torch.device(device)
        self.samples: torch.Tensor | None = None
        self._sample_hash: torch.Tensor | None = None
        self.draw = 0
        self._calls: dict[int, int] = {}

    def set_samples(self, indices: torch.Tensor) -> None:
        """The global sample indices of the rows of the next passes' batch."""
        self.samples = indices
        self._sample_hash = sample_hash(indices).to(self.device)

    def set_draw(self, draw: int) -> None:
        """Start MC draw `draw` (one complete forward pass)."""
        self.draw = int(draw)
        self._calls.clear()

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sample indices, their hashes) of the current batch."""
        if self.samples is None or self._sample_hash is None:
            raise RuntimeError("HashedDropout: set_samples() comes before a pass")
        return self.samples, self._sample_hash

    def keep(self, layer: int, units: int, p: float) -> torch.Tensor:
        """(batch, units) boolean keep-mask of the next call of `layer` in this draw."""
        call = self._calls.get(layer, 0)
        self._calls[layer] = call + 1
        key = _key(self.seed, self.step, layer, call)
        row = draw_row_hash(key, self.draw, units, self.device)
        h = torch.bitwise_xor(row[None, :], self._batch()[1][:, None])
        return finalize_(h) < keep_threshold(p)

    def dropout(self, x: torch.Tensor, p: float, layer: int = _HEAD_LAYER) -> torch.Tensor:
        """Inverted dropout of `x` (batch first), elementwise over all non-batch dims."""
        return self._apply(x, p, layer, channelwise=False, alpha=False)

    def _apply(
        self, x: torch.Tensor, p: float, layer: int, channelwise: bool, alpha: bool
    ) -> torch.Tensor:
        if p == 0.0:
            return x
        n = len(self._batch()[0])
        if x.dim() < 2 or x.shape[0] != n:
            from .errors import FlexsampleError

            raise FlexsampleError(
                f"--mc-mode full: a dropout layer got an input of shape {tuple(x.shape)} whose "
                f"first dimension is not the batch ({n}); use --mc-mode head for this model"
            )
        shape = (n, x.shape[1]) + (1,) * (x.dim() - 2) if channelwise else tuple(x.shape)
        units = 1
        for s in shape[1:]:
            units *= s
        if p >= 1.0:
            keep = torch.zeros(shape, dtype=torch.bool, device=x.device)
        else:
            keep = self.keep(layer, units, p).view(shape)
        if alpha:  # torch's alpha dropout: dropped units go to SELU's saturation value
            a = 1.0 / ((_ALPHA * _ALPHA * p + 1.0) * (1.0 - p)) ** 0.5
            k = keep.to(x.dtype)
            return x * (k * a) + (k - 1.0) * (_ALPHA * a) + _ALPHA * a * p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - p))

    def module_forward(
        self, module: torch.nn.modules.dropout._DropoutNd, layer: int
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """A forward for `module` (a torch dropout layer) drawing its mask from the hash."""
        channelwise = isinstance(module, _CHANNEL_DROPOUTS)
        alpha = isinstance(module, torch.nn.AlphaDropout | torch.nn.FeatureAlphaDropout)

        def forward(x: torch.Tensor) -> torch.Tensor:
            return self._apply(x, float(module.p), layer, channelwise, alpha)

        return forward


@contextlib.contextmanager
def hashed_dropouts(model: torch.nn.Module, seed: int, step: int) -> Iterator[HashedDropout]:
    """Within the block every dropout module of `model` draws hashed masks (model in eval)."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    masks = HashedDropout(seed, step, device)
    patched = []
    try:
        for layer, m in enumerate(model.modules()):
            if isinstance(m, torch.nn.modules.dropout._DropoutNd):
                patched.append((m, m.__dict__.get("forward")))
                m.forward = masks.module_forward(m, layer)
        yield masks
    finally:
        for m, own in patched:
            if own is None:
                del m.forward
            else:
                m.forward = own
