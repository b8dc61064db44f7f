"""PyTorch eager: the reference every other runtime is compared with."""

from __future__ import annotations

import torch
from torch import nn

from toolkit.errors import UsageError
from toolkit.runtimes.base import RUNTIMES, Runner


@RUNTIMES.register("eager")
class EagerRunner(Runner):
    """Runs an ``nn.Module`` in eval mode under ``torch.inference_mode``."""

    device_types = ("cpu", "cuda")

    def _load(self) -> None:
        if not isinstance(self.source, nn.Module):
            kind = type(self.source).__name__
            raise UsageError(f"runtime 'eager' needs an nn.Module, got {kind}")
        self.module = self.source.to(self.device).eval()

    def _infer(self, prepared: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(prepared)
