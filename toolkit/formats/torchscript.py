"""TorchScript (legacy): ``torch.jit.trace`` checked at a second batch, or ``torch.jit.script``.

TorchScript is deprecated since PyTorch 2.9 but still asked for; the manifest says so.
Tracing freezes shape-dependent branches, so the trace is re-run with ``check_inputs`` at
batch size 1 (the example's batch is larger): a model whose graph depends on the batch fails
here.
The artifact loads with plain ``torch.jit.load``.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toolkit.errors import ExportError, first_line
from toolkit.formats.base import FORMATS, Format
from toolkit.manifest import Manifest

MODEL_FILE = "model.pt"
LEGACY_NOTE = (
    "TorchScript is legacy (deprecated since PyTorch 2.9); prefer exported-program or onnx"
)


def resize_batch(example: torch.Tensor, batch: int) -> torch.Tensor:
    """The example's samples repeated (or cut) to ``batch`` rows."""
    reps = -(-batch // example.shape[0])
    return example.repeat(reps, *([1] * (example.dim() - 1)))[:batch].contiguous()


def check_batch_sizes(example: torch.Tensor) -> list[int]:
    """Batch sizes the trace is re-checked at (each check re-traces: ~2 s for resnet18)."""
    return [1]


def script_module(model: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` on a copy whose Python properties are left out of the script.

    Properties such as ``input_shape -> tuple[int, ...]`` are metadata, not forward code,
    and TorchScript cannot compile many of their annotations.
    """
    model = copy.deepcopy(model)
    for module in model.modules():
        cls = type(module)
        if cls.__module__.split(".")[0] == "torch":
            continue
        properties = [
            name
            for name in dir(cls)
            if isinstance(getattr(cls, name, None), property) and not hasattr(nn.Module, name)
        ]
        if properties:
            # TorchScript reads the list from the class, so give this copy its own subclass.
            attrs = {
                "__jit_unused_properties__": properties,
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
            }
            module.__class__ = type(cls.__name__, (cls,), attrs)
    return torch.jit.script(model)


def trace_module(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` with ``check_inputs`` at :func:`check_batch_sizes`."""
    checks = [(resize_batch(example, b),) for b in check_batch_sizes(example)]
    return torch.jit.trace(model, (example,), check_inputs=checks)


@FORMATS.register("torchscript")
class TorchScriptFormat(Format):
    """A TorchScript archive (``model.pt``), run by ``torch.jit.load``."""

    name = "torchscript"
    runtime = "torchscript"
    suffix = ".pt"

    def export(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        out_dir: Path,
        script: bool = False,
        **options: Any,
    ) -> Manifest:
        """Trace (default) or script ``model`` and save ``out_dir/model.pt``.

        Args:
            model: Plain module in eval mode, on CPU.
            example_input: A batch of at least 2.
            out_dir: Empty folder to write into.
            script: Use ``torch.jit.script`` (keeps Python control flow) instead of tracing.
            options: Options meant for other formats (ignored).
        """
        method = "script" if script else "trace"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                module = script_module(model) if script else trace_module(model, example_input)
        except torch.jit.TracingCheckError as exc:
            raise ExportError(
                f"TorchScript trace of {type(model).__name__} changes with the batch size "
                "(shape-dependent code); try --script, or the exported-program format"
            ) from exc
        except Exception as exc:
            raise ExportError(
                f"torch.jit.{method} of {type(model).__name__} failed: {first_line(exc)}"
            ) from exc
        module.save(str(out_dir / MODEL_FILE))
        notes = [LEGACY_NOTE]
        if not script:
            sizes = ", ".join(map(str, [example_input.shape[0], *check_batch_sizes(example_input)]))
            notes.append(f"traced: control flow is frozen; checked at batch sizes {sizes}")
        return self.new_manifest(
            out_dir,
            MODEL_FILE,
            example_input,
            exporter=f"torch.jit.{method}",
            options={"script": script},
            notes=notes,
        )
