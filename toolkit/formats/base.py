"""The exporter protocol: one subclass per format, registered by name in ``FORMATS``."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from toolkit.manifest import Manifest
from toolkit.registry import Registry


class Format(abc.ABC):
    """An export format.

    Subclasses set the class constants and implement :meth:`export`, which writes the
    artifact file(s) into ``out_dir`` (already created, empty, and renamed into place by
    the caller when the export succeeds) and returns the manifest.

    Default parity tolerances are constants here; ``toolkit verify`` can override them.
    ``min_agreement`` is the minimal top-1 label agreement with the PyTorch reference;
    ``max_accuracy_drop`` the largest allowed test-accuracy drop (absolute, 0.005 = 0.5
    points); a format ``judged_by_labels`` passes on agreement and accuracy, not on atol.
    """

    name: ClassVar[str]
    runtime: ClassVar[str]
    suffix: ClassVar[str]
    atol: ClassVar[float] = 1e-4
    rtol: ClassVar[float] = 1e-3
    min_agreement: ClassVar[float] = 1.0
    max_accuracy_drop: ClassVar[float] = 0.0
    judged_by_labels: ClassVar[bool] = False

    @abc.abstractmethod
    def export(
        self, model: nn.Module, example_input: torch.Tensor, out_dir: Path, **options: Any
    ) -> Manifest:
        """Export ``model`` (plain nn.Module, eval mode, CPU) into ``out_dir``."""


FORMATS: Registry[type[Format]] = Registry("format")
