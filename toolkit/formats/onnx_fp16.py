"""ONNX with fp16 weights and compute, fp32 inputs and outputs.

Self-contained: the fp32 model is exported to a temporary file inside the output folder,
then converted with ``onnxruntime.transformers.float16.convert_float_to_float16``
(``keep_io_types=True``). ``ReduceMean`` stays in fp32: its fp16 sums can overflow to inf
and NaN (onnxconverter-common #323). The converter leaves the graph out of topological
order, which ``onnx.checker`` rejects, so the graph is sorted before saving. An export whose
outputs on the example input are not finite fails instead of being written.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toolkit.errors import MissingDependencyError
from toolkit.formats.base import FORMATS, Format
from toolkit.formats.onnx import (
    MODEL_FILE,
    check_finite_outputs,
    check_onnx_file,
    export_onnx_file,
    import_onnx,
    onnx_manifest,
    save_onnx_model,
)
from toolkit.manifest import Manifest

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
class OnnxFp16Format(Format):
    """ONNX in half precision (weights and compute), float32 at the boundary."""

    name = "onnx-fp16"
    runtime = "onnxruntime"
    suffix = ".onnx"
    atol = 1e-2
    rtol = 1e-2
    min_agreement = 0.99
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
        **options: Any,
    ) -> Manifest:
        """Export fp32 ONNX to a temporary file, convert it to fp16, save ``model.onnx``.

        Args:
            model: Plain module in eval mode, on CPU.
            example_input: A batch of at least 2.
            out_dir: Empty folder to write into.
            exporter: ``dynamo`` (default) or ``legacy``, for the fp32 export.
            opset: ONNX opset; None lets the exporter choose.
            external_data: Force (True) or forbid (False) an external-data file.
            options: Options meant for other formats (ignored).
        """
        onnx = import_onnx()
        with tempfile.TemporaryDirectory(prefix=".fp32-", dir=out_dir) as tmp:
            fp32 = Path(tmp) / MODEL_FILE
            export_onnx_file(model, example_input, fp32, exporter, opset, external_data=False)
            converted = convert_to_fp16(onnx.load(str(fp32)))
        path = out_dir / MODEL_FILE
        save_onnx_model(converted, path, external_data)
        info = check_onnx_file(path)
        check_finite_outputs(path, example_input, "fp16")
        return onnx_manifest(
            self,
            out_dir,
            example_input,
            info,
            f"torch.onnx.export ({exporter}) + onnxruntime convert_float_to_float16",
            {
                "exporter": exporter,
                "opset": opset,
                "external_data": external_data,
                "keep_io_types": True,
                "fp32_ops": list(FP32_OPS),
            },
            ["fp16 weights and compute; inputs and outputs stay float32"],
        )
