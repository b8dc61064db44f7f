"""The model registry instance (kept apart so model files can import it)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from toolkit.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
