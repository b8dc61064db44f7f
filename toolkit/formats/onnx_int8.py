"""ONNX with int8 weights: onnxruntime dynamic quantization (``quantize_dynamic``, QInt8).

Self-contained: the fp32 model is exported to a temporary file inside the output folder,
then quantized. Activations are quantized on the fly at run time, so no calibration data is
needed. Judge it by labels and task accuracy, not by elementwise tolerances.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from toolkit.errors import ExportError, MissingDependencyError, first_line
from toolkit.formats.base import FORMATS
from toolkit.formats.onnx import (
    DerivedOnnxFormat,
    wants_external_data,
    weight_bytes,
)


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
class OnnxInt8Format(DerivedOnnxFormat):
    """ONNX with int8 dynamically quantized weights, float32 at the boundary."""

    name = "onnx-int8"
    atol = 1e-1
    rtol = 1e-1
    min_agreement = 0.97
    max_accuracy_drop = 0.005
    kind = "int8"
    tool = "onnxruntime quantize_dynamic (QInt8)"
    note = "int8 weights (dynamic quantization); activations quantized at run time"

    def derive(
        self,
        model: nn.Module,
        fp32: Path,
        path: Path,
        external_data: bool | None,
        per_channel: bool = False,
        **options: Any,
    ) -> dict[str, Any]:
        """Quantize the fp32 file's weights to int8 into ``path``.

        Args:
            per_channel: Quantize weights per output channel instead of per tensor.
        """
        # int8 weights are about a quarter of the fp32 bytes.
        external = wants_external_data(weight_bytes(model) // 4, external_data)
        quantize_int8(fp32, path, per_channel, external)
        return {"weight_type": "QInt8", "per_channel": per_channel}
