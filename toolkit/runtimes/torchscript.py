"""TorchScript artifacts, loaded with ``torch.jit.load`` (legacy format)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from toolkit.errors import CheckpointError, first_line
from toolkit.runtimes.base import RUNTIMES, ArtifactRunner


def set_torch_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count when one is given."""
    if threads is not None:
        torch.set_num_threads(int(threads))


@RUNTIMES.register("torchscript")
class TorchScriptRunner(ArtifactRunner):
    """Runs a ``model.pt`` TorchScript archive under ``torch.inference_mode``."""

    name = "torchscript"
    device_types = ("cpu", "cuda")
    model_suffix = ".pt"

    def _load_artifact(self, path: Path) -> None:
        set_torch_threads(self.threads)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation
                self.module = torch.jit.load(str(path), map_location=self.device)
        except (RuntimeError, ValueError, OSError) as exc:
            raise CheckpointError(
                f"{path} cannot be loaded by torch.jit.load ({first_line(exc)}); export it again"
            ) from None
        self.module.eval()

    def _infer(self, prepared: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(prepared)
