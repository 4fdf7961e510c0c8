"""Classifiers that fit the engine's model contract: embed(x) -> (B, D), head, dropout_p.

Dropout sits only between the pooled features and the final linear layer (the paper's
model), which makes head-only MC dropout exact.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from flexsample.engine.errors import FlexsampleError

SMALL_CNN = "small-cnn"


class ContractClassifier(nn.Module):
    """forward(x) = head(dropout(embed(x))); subclasses define `embed`."""

    head: nn.Linear
    dropout_p: float

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.embed(x)
        return self.head(nn.functional.dropout(f, p=self.dropout_p, training=self.training))


class SmallCNN(ContractClassifier):
    """A compact CNN for tiny images (8x8 digits up to ~64 px)."""

    def __init__(self, num_classes: int, in_chans: int = 1, width: int = 32, dropout: float = 0.5):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dropout_p = float(dropout)
        self.head = nn.Linear(4 * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class TimmClassifier(ContractClassifier):
    """Any timm backbone: forward_features + forward_head(pre_logits=True), then our head."""

    def __init__(self, backbone: str, num_classes: int, in_chans: int = 3, dropout: float = 0.5):
        super().__init__()
        import timm

        try:
            self.net = timm.create_model(
                backbone,
                pretrained=False,
                num_classes=num_classes,
                in_chans=in_chans,
                drop_rate=0.0,
            )
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            raise FlexsampleError(
                f"unknown --backbone '{backbone}': {exc}; use '{SMALL_CNN}' or a timm model "
                "name (see timm.list_models())"
            ) from None
        head = self.net.get_classifier()
        if not isinstance(head, nn.Linear):
            raise FlexsampleError(
                f"backbone '{backbone}' has no single linear classifier head "
                f"({type(head).__name__}); pick a timm model with a linear head"
            )
        self.head = head
        self.dropout_p = float(dropout)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


class AdaptedModel(ContractClassifier):
    """Makes a user's (embedding module, linear head) pair fit the contract."""

    def __init__(self, embedding: nn.Module, head: nn.Linear, dropout: float = 0.5):
        super().__init__()
        self.embedding = embedding
        self.head = head
        self.dropout_p = float(dropout)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.embedding(x), 1)


def adapt_model(embedding: nn.Module, head: nn.Linear, dropout: float = 0.5) -> AdaptedModel:
    return AdaptedModel(embedding, head, dropout)


def create_model(
    backbone: str,
    num_classes: int,
    in_chans: int,
    dropout: float = 0.5,
    pretrained: str | None = None,
) -> ContractClassifier:
    """The classifier for `--backbone` (small-cnn or a timm name), weights from a local file."""
    if not 0.0 <= dropout < 1.0:
        raise FlexsampleError(f"dropout must be in [0, 1), got {dropout}")
    if backbone == SMALL_CNN:
        model: ContractClassifier = SmallCNN(num_classes, in_chans=in_chans, dropout=dropout)
    else:
        model = TimmClassifier(backbone, num_classes, in_chans=in_chans, dropout=dropout)
    if pretrained:
        load_pretrained(model, pretrained)
    return model


def load_pretrained(model: ContractClassifier, path: str) -> None:
    """Load backbone weights from a local file; the classifier head keeps its fresh init."""
    p = Path(path)
    if not p.is_file():
        raise FlexsampleError(
            f"--pretrained {path}: no such file (weights load from a local file only; "
            "nothing is downloaded)"
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FlexsampleError(f"--pretrained {path}: cannot read weights ({exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    target = model.net if isinstance(model, TimmClassifier) else model
    own = target.state_dict()
    head_name = next(n for n, m in target.named_modules() if m is model.head)
    usable = {
        k: v
        for k, v in state.items()
        if k in own and not k.startswith(head_name + ".") and tuple(v.shape) == tuple(own[k].shape)
    }
    if not usable:
        raise FlexsampleError(
            f"--pretrained {path}: no tensor matches the '{type(target).__name__}' backbone "
            "(wrong architecture?)"
        )
    target.load_state_dict(usable, strict=False)
