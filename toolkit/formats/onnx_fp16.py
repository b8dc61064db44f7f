"""ONNX with fp16 weights and compute, fp32 inputs and outputs.

Self-contained: the fp32 model is exported to a temporary file inside the output folder,
then converted with ``onnxruntime.transformers.float16.convert_float_to_float16``
(``keep_io_types=True``). ``ReduceMean`` stays in fp32: its fp16 sums can overflow to inf
and NaN (onnxconverter-common #323). The converter leaves the graph out of topological
order, which ``onnx.checker`` rejects, so the graph is sorted before saving. An export whose
outputs on the example input are not finite fails instead of being written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from toolkit.errors import MissingDependencyError
from toolkit.formats.base import FORMATS
from toolkit.formats.onnx import DerivedOnnxFormat, import_onnx, save_onnx_model

#: Ops kept in fp32 on top of the converter's default block list.
FP32_OPS = ("ReduceMean",)


def convert_to_fp16(model: Any) -> Any:
    """fp16 copy of an fp32 ``ModelProto`` with fp32 inputs/outputs, topologically sorted."""
    try:
        from onnxruntime.transformers.float16 import (
            DEFAULT_OP_BLOCK_LIST,
            convert_float_to_float16,
        )
        from onnxruntime.transformers.onnx_model import OnnxModel
    except ImportError:
        raise MissingDependencyError(
            "onnx-fp16 export needs onnxruntime: pip install onnxruntime"
        ) from None
    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS]
    )
    sortable = OnnxModel(converted)
    sortable.topological_sort()
    return sortable.model


@FORMATS.register("onnx-fp16")
class OnnxFp16Format(DerivedOnnxFormat):
    """ONNX in half precision (weights and compute), float32 at the boundary."""

    name = "onnx-fp16"
    atol = 1e-2
    rtol = 1e-2
    min_agreement = 0.99
    max_accuracy_drop = 0.005
    kind = "fp16"
    tool = "onnxruntime convert_float_to_float16"
    note = "fp16 weights and compute; inputs and outputs stay float32"

    def derive(
        self,
        model: nn.Module,
        fp32: Path,
        path: Path,
        external_data: bool | None,
        **options: Any,
    ) -> dict[str, Any]:
        """Convert the fp32 file to fp16 (fp32 inputs and outputs) and save it at ``path``."""
        converted = convert_to_fp16(import_onnx().load(str(fp32)))
        save_onnx_model(converted, path, external_data)
        return {"keep_io_types": True, "fp32_ops": list(FP32_OPS)}
