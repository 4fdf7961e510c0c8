"""Training consumer of the engine: models, losses, samplers, trainer, metrics."""

from .losses import LOSSES, Loss, build_loss
from .metrics import classification_metrics
from .models import (
    SMALL_CNN,
    ContractClassifier,
    SmallCNN,
    TimmClassifier,
    adapt_model,
    create_model,
)
from .samplers import SAMPLERS
from .trainer import TrainConfig, Trainer

__all__ = [
    "LOSSES",
    "SAMPLERS",
    "SMALL_CNN",
    "ContractClassifier",
    "Loss",
    "SmallCNN",
    "TimmClassifier",
    "TrainConfig",
    "Trainer",
    "adapt_model",
    "build_loss",
    "classification_metrics",
    "create_model",
]
