"""The tutorial's multilayer perceptron."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from toolkit.models._registry import MODELS


@MODELS.register("mlp")
class PyTorchMLP(nn.Module):
    """The tutorial's ``PyTorchMLP``: 784 → 50 → 25 → classes with ReLU.

    The attribute layout (``all_layers``, with ``Flatten`` first) matches the tutorial, so
    state dicts saved from the tutorial's class load unchanged. The Lightning course's
    variant flattens in ``forward`` instead, which puts the Linear layers at
    ``all_layers.0/2/4`` rather than ``1/3/5``; its state dicts load too (see
    :meth:`adapt_state_dict`), through ``load_state_dict`` and toolkit's loaders.
    """

    #: Linear positions in the variant that flattens in ``forward`` → positions here.
    FLATTEN_IN_FORWARD_LAYOUT: ClassVar[dict[int, int]] = {0: 1, 2: 3, 4: 5}

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
        self.register_load_state_dict_pre_hook(_rename_flatten_in_forward_keys)

    @classmethod
    def adapt_state_dict(cls, state_dict: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        """``state_dict`` with the flatten-in-``forward`` variant's keys renamed to this layout.

        Only a state dict that has ``all_layers.0.weight`` (a ``Flatten`` here, with no
        weights) and no ``all_layers.1.weight`` is renamed; any other comes back as it is.
        """
        head = f"{prefix}all_layers."
        if f"{head}0.weight" not in state_dict or f"{head}1.weight" in state_dict:
            return dict(state_dict)
        renamed = {}
        for key, value in state_dict.items():
            if key.startswith(head):
                index, dot, rest = key[len(head) :].partition(".")
                if index.isdigit() and int(index) in cls.FLATTEN_IN_FORWARD_LAYOUT:
                    key = f"{head}{cls.FLATTEN_IN_FORWARD_LAYOUT[int(index)]}{dot}{rest}"
            renamed[key] = value
        return renamed

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


def _rename_flatten_in_forward_keys(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any
) -> None:
    """``load_state_dict`` pre-hook: rename the flatten-in-``forward`` variant's keys."""
    renamed = PyTorchMLP.adapt_state_dict(state_dict, prefix)
    if renamed.keys() != state_dict.keys():
        state_dict.clear()
        state_dict.update(renamed)
