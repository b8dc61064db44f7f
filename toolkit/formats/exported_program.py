"""``torch.export`` with a dynamic batch axis, saved with ``torch.export.save`` as ``.pt2``.

The artifact loads with plain ``torch.export.load(path).module()``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toolkit.errors import ExportError, first_line
from toolkit.formats.base import FORMATS, Format
from toolkit.manifest import Manifest

MODEL_FILE = "model.pt2"


def export_program(model: nn.Module, example_input: torch.Tensor) -> Any:
    """``torch.export.export`` with batch axis 0 dynamic; failures become ExportError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # A named Dim raises if the batch is tied to a constant (Dim.AUTO would not).
            return torch.export.export(
                model, (example_input,), dynamic_shapes=({0: torch.export.Dim("batch")},)
            )
    except Exception as exc:
        raise ExportError(
            f"torch.export of {type(model).__name__} failed: {first_line(exc)}"
        ) from exc


@FORMATS.register("exported-program")
class ExportedProgramFormat(Format):
    """A ``torch.export`` ExportedProgram (``model.pt2``)."""

    name = "exported-program"
    runtime = "exported-program"
    suffix = ".pt2"

    def export(
        self, model: nn.Module, example_input: torch.Tensor, out_dir: Path, **options: Any
    ) -> Manifest:
        """Export ``model`` and save ``out_dir/model.pt2``.

        Args:
            model: Plain module in eval mode, on CPU.
            example_input: A batch of at least 2.
            out_dir: Empty folder to write into.
            options: Options meant for other formats (ignored).
        """
        program = export_program(model, example_input)
        torch.export.save(program, str(out_dir / MODEL_FILE))
        return self.new_manifest(out_dir, MODEL_FILE, example_input, exporter="torch.export.export")
