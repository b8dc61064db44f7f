"""Registry of plain ``nn.Module`` networks, looked up by name.

Every builder takes keyword arguments only and returns a module with an ``input_shape``
attribute (one sample, without the batch axis), so that a name plus kwargs alone rebuild
the network.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from toolkit.models import torchvision_models as _torchvision_models  # noqa: F401  (registers)
from toolkit.models._registry import MODELS
from toolkit.models.cnn import PyTorchCNN
from toolkit.models.mlp import PyTorchMLP

__all__ = [
    "MODELS",
    "PyTorchCNN",
    "PyTorchMLP",
    "build_model",
    "declared_input_shape",
    "input_shape_of",
]


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the network registered as ``name`` with ``kwargs``.

    Raises:
        UnknownNameError: ``name`` is not registered; the message lists valid names.
        UsageError: ``kwargs`` do not fit the builder.
    """
    from toolkit.errors import UsageError

    builder = MODELS.get(name)
    try:
        return builder(**kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:  # wrong names, types or sizes
        message = " ".join(str(exc).split())
        raise UsageError(f"bad arguments for model '{name}': {message}") from None


def declared_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The per-sample input shape a network declares (``input_shape`` attribute), or None."""
    shape = getattr(model, "input_shape", None)
    return None if shape is None else tuple(int(s) for s in shape)


def input_shape_of(model: nn.Module) -> tuple[int, ...]:
    """The per-sample input shape a network declares (``input_shape`` attribute)."""
    shape = declared_input_shape(model)
    if shape is None:
        from toolkit.errors import UsageError

        raise UsageError(
            f"{type(model).__name__} has no input_shape; pass an example input explicitly"
        )
    return shape
