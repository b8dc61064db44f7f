"""PyTorch eager: the reference every other runtime is compared with."""

from __future__ import annotations

import torch

from toolkit.runtimes.base import RUNTIMES, Runner


@RUNTIMES.register("eager")
class EagerRunner(Runner):
    """Runs an ``nn.Module`` in eval mode under ``torch.inference_mode``."""

    device_types = ("cpu", "cuda")

    def _load(self) -> None:
        self.module = self.eval_module()

    def _infer(self, prepared: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(prepared)
