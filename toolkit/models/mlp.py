"""The tutorial's multilayer perceptron."""

from __future__ import annotations

import math

import torch
from torch import nn

from toolkit.models._registry import MODELS


@MODELS.register("mlp")
class PyTorchMLP(nn.Module):
    """The tutorial's ``PyTorchMLP``: 784 → 50 → 25 → classes with ReLU.

    The attribute layout (``all_layers``) matches the tutorial exactly, so state dicts saved
    from the tutorial's class load unchanged.
    """

    def __init__(self, num_features: int = 784, num_classes: int = 10) -> None:
        super().__init__()
        self.num_features = num_features
        self.num_classes = num_classes
        self.all_layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(num_features, 50),
            nn.ReLU(),
            nn.Linear(50, 25),
            nn.ReLU(),
            nn.Linear(25, num_classes),
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One square grey image when ``num_features`` is a square, else a flat vector."""
        side = math.isqrt(self.num_features)
        if side * side == self.num_features:
            return (1, side, side)
        return (self.num_features,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (batch, num_classes)."""
        return self.all_layers(x)
