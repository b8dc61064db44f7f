"""``torch.export`` artifacts (``.pt2``), loaded with ``torch.export.load(...).module()``."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from toolkit.errors import CheckpointError, first_line
from toolkit.runtimes.base import RUNTIMES, ArtifactRunner


@RUNTIMES.register("exported-program")
class ExportedProgramRunner(ArtifactRunner):
    """Runs the module of a saved ExportedProgram under ``torch.inference_mode``.

    The program was exported in eval mode; its module cannot be switched (``eval()`` on it
    raises), so none is called.
    """

    name = "exported-program"
    device_types = ("cpu", "cuda")
    model_suffix = ".pt2"

    def _load_artifact(self, path: Path) -> None:
        if self.threads is not None:
            torch.set_num_threads(int(self.threads))
        # torch.export.load logs a traceback before its fallback reader; the error we raise
        # below says what went wrong in one line.
        export_log = logging.getLogger("torch.export")
        disabled, export_log.disabled = export_log.disabled, True
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                # torch 2.11 reads the archive's weights from a read-only buffer and says
                # so on every load; this runner only reads them.
                warnings.filterwarnings("ignore", message="The given buffer is not writable")
                program = torch.export.load(str(path))
            self.module = program.module().to(self.device)
        except Exception as exc:
            raise CheckpointError(
                f"{path} cannot be loaded by torch.export.load ({first_line(exc)}); export it again"
            ) from None
        finally:
            export_log.disabled = disabled

    def _infer(self, prepared: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(prepared)
