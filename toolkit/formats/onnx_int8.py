"""ONNX with int8 weights: onnxruntime dynamic quantization (``quantize_dynamic``, QInt8).

Self-contained: the fp32 model is exported to a temporary file inside the output folder,
then quantized. Activations are quantized on the fly at run time, so no calibration data is
needed. Judge it by labels and task accuracy, not by elementwise tolerances.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toolkit.errors import ExportError, MissingDependencyError
from toolkit.formats.base import FORMATS, Format
from toolkit.formats.onnx import (
    MODEL_FILE,
    check_finite_outputs,
    check_onnx_file,
    export_onnx_file,
    first_line,
    onnx_manifest,
    wants_external_data,
    weight_bytes,
)
from toolkit.manifest import Manifest


class _DropPreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _no_preprocess_hint() -> Iterator[None]:
    # quantize_dynamic logs "Please consider to run pre-processing" on the root logger;
    # measured here, quant_pre_process changed nothing for these models.
    root = logging.getLogger()
    hint = _DropPreprocessHint()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


def quantize_int8(src: Path, dst: Path, per_channel: bool, external: bool) -> None:
    """``quantize_dynamic(src, dst, weight_type=QInt8)``, with failures as ExportError."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise MissingDependencyError(
            "onnx-int8 export needs onnxruntime: pip install onnxruntime"
        ) from None
    try:
        with _no_preprocess_hint():
            quantize_dynamic(
                src,
                dst,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                use_external_data_format=external,
            )
    except Exception as exc:
        raise ExportError(f"int8 dynamic quantization failed: {first_line(exc)}") from exc


@FORMATS.register("onnx-int8")
class OnnxInt8Format(Format):
    """ONNX with int8 dynamically quantized weights, float32 at the boundary."""

    name = "onnx-int8"
    runtime = "onnxruntime"
    suffix = ".onnx"
    atol = 1e-1
    rtol = 1e-1
    min_agreement = 0.97
    max_accuracy_drop = 0.005
    judged_by_labels = True

    def export(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        out_dir: Path,
        exporter: str = "dynamo",
        opset: int | None = None,
        external_data: bool | None = None,
        per_channel: bool = False,
        **options: Any,
    ) -> Manifest:
        """Export fp32 ONNX to a temporary file, quantize it, save ``model.onnx``.

        Args:
            model: Plain module in eval mode, on CPU.
            example_input: A batch of at least 2.
            out_dir: Empty folder to write into.
            exporter: ``dynamo`` (default) or ``legacy``, for the fp32 export.
            opset: ONNX opset; None lets the exporter choose.
            external_data: Force (True) or forbid (False) an external-data file.
            per_channel: Quantize weights per output channel instead of per tensor.
            options: Options meant for other formats (ignored).
        """
        # int8 weights are about a quarter of the fp32 bytes.
        external = wants_external_data(weight_bytes(model) // 4, external_data)
        path = out_dir / MODEL_FILE
        with tempfile.TemporaryDirectory(prefix=".fp32-", dir=out_dir) as tmp:
            fp32 = Path(tmp) / MODEL_FILE
            export_onnx_file(model, example_input, fp32, exporter, opset, external_data=False)
            quantize_int8(fp32, path, per_channel, external)
        info = check_onnx_file(path)
        check_finite_outputs(path, example_input, "int8")
        return onnx_manifest(
            self,
            out_dir,
            example_input,
            info,
            f"torch.onnx.export ({exporter}) + onnxruntime quantize_dynamic (QInt8)",
            {
                "exporter": exporter,
                "opset": opset,
                "external_data": external_data,
                "weight_type": "QInt8",
                "per_channel": per_channel,
            },
            ["int8 weights (dynamic quantization); activations quantized at run time"],
        )
