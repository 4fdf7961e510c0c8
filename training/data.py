"""Batches for training and evaluation: direct slicing for in-memory splits, DataLoaders else."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from flexsample.datasets.base import Split


def iterate(
    split: Split,
    indices: np.ndarray,
    batch_size: int,
    train: bool,
    device: torch.device,
    num_workers: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches over `indices` in the given order (the caller shuffles)."""
    indices = np.asarray(indices, dtype=np.int64)
    if split.in_memory is not None:
        labels = torch.as_tensor(split.labels)
        for start in range(0, len(indices), batch_size):
            idx = torch.as_tensor(indices[start : start + batch_size])
            yield split.in_memory[idx], labels[idx]
        return
    cuda = device.type == "cuda"
    loader = DataLoader(
        Subset(split.torch_dataset(train), indices.tolist()),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=cuda,
        persistent_workers=False,
        drop_last=False,
    )
    yield from loader


def input_fn(split: Split, device: torch.device, num_workers: int = 0):
    """The engine's InputFn over a split with the evaluation transform."""

    def batches(indices: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
        for x, _ in iterate(split, indices, batch_size, False, device, num_workers):
            yield x

    return batches


@torch.inference_mode()
def predict_probs(
    model: torch.nn.Module,
    split: Split,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int = 0,
) -> np.ndarray:
    """Softmax probabilities (N, C) of the eval-mode model over a whole split."""
    from flexsample.engine.context import autocast_for

    model.eval()
    out = []
    for x, _ in iterate(split, np.arange(len(split)), batch_size, False, device, num_workers):
        x = x.to(device, non_blocking=True)
        if device.type == "cuda" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(device):
            logits = model(x)
        out.append(torch.softmax(logits.float(), -1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.head.out_features), np.float32)
