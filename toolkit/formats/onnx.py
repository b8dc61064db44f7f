"""ONNX via ``torch.onnx.export``: the dynamo exporter by default, the legacy one on request.

The batch axis is dynamic. After saving, ``onnx.checker.check_model(full_check=True)``
validates the file and the batch axis is checked to be symbolic, so a model specialised to
its example batch size fails here instead of at inference. The helpers are shared with the
derived ``onnx-fp16`` and ``onnx-int8`` formats.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from toolkit.errors import (
    ExportError,
    MissingDependencyError,
    ToolkitError,
    UsageError,
    first_line,
)
from toolkit.formats.base import FORMATS, Format
from toolkit.manifest import Manifest

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MODEL_FILE = "model.onnx"
EXPORTERS = ("dynamo", "legacy")
#: Weights above this size go to ``model.onnx.data`` next to the model (protobuf caps at 2 GB).
EXTERNAL_DATA_THRESHOLD = 100 * 2**20


def import_onnx() -> Any:
    """``import onnx``, or a clear error naming the package."""
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError(
            "ONNX export needs the 'onnx' package: pip install onnx"
        ) from None
    return onnx


#: Ops that only a quantized graph holds (onnxruntime's quantize_dynamic and QDQ forms).
_QUANTIZED_OPS = frozenset(
    {
        "DynamicQuantizeLinear",
        "QuantizeLinear",
        "DequantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QLinearMatMul",
        "QLinearConv",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
    }
)


#: Ops whose output type tells what precision a graph computes in.
_COMPUTE_OPS = frozenset({"Gemm", "MatMul", "Conv", "ConvTranspose"})


def onnx_precision(path: Path) -> str | None:
    """What an ONNX file computes in: "int8", "fp16" or "fp32", read from its graph; None
    when the graph has no matrix product or convolution to tell by.

    "int8" when it holds quantization ops; otherwise the element type (after ONNX shape
    inference) of what its Gemm, MatMul and Conv nodes compute. Buffers of other types (a
    uint8 lookup table, an fp16 constant) do not count. External weight data is not read:
    the tensor types are in the graph itself.
    """
    onnx = import_onnx()
    model = onnx.load(str(path), load_external_data=False)
    if {node.op_type for node in model.graph.node} & _QUANTIZED_OPS:
        return "int8"
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {
        value.name: value.type.tensor_type.elem_type
        for value in (*graph.value_info, *graph.input, *graph.output)
    }
    computed = {
        types.get(node.output[0])
        for node in graph.node
        if node.op_type in _COMPUTE_OPS and node.output
    } - {None, onnx.TensorProto.UNDEFINED}
    if onnx.TensorProto.FLOAT16 in computed:
        return "fp16"
    return "fp32" if computed else None


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence the exporters' deprecation noise and progress prints (they go to stdout)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def wants_external_data(size_bytes: int, external_data: bool | None) -> bool:
    """Whether to store weights in a separate file (``None``: only above the threshold)."""
    return size_bytes > EXTERNAL_DATA_THRESHOLD if external_data is None else bool(external_data)


def save_onnx_model(model: Any, path: Path, external_data: bool | None = None) -> None:
    """Save a ``ModelProto``; weights go to ``<name>.data`` when large (or asked for)."""
    onnx = import_onnx()
    external = wants_external_data(model.ByteSize(), external_data)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=f"{path.name}.data",
        size_threshold=1024,
    )


@dataclasses.dataclass
class OnnxInfo:
    """What a saved, checked ONNX file declares."""

    opset: int
    ir_version: int
    input_names: list[str]
    output_names: list[str]
    batch_dim: str | int


def check_onnx_file(path: Path) -> OnnxInfo:
    """Run ``onnx.checker.check_model(full_check=True)`` on ``path`` and read its header.

    Raises:
        ExportError: the model is invalid, or its batch axis is not symbolic.
    """
    onnx = import_onnx()
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path.name} fails onnx.checker: {first_line(exc)}") from exc
    model = onnx.load(str(path), load_external_data=False)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    graph_inputs = [
        i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    dims = graph_inputs[0].type.tensor_type.shape.dim
    batch_dim: str | int = dims[0].dim_param or dims[0].dim_value if dims else 0
    if not isinstance(batch_dim, str) or not batch_dim:
        raise ExportError(
            f"{path.name}: the exporter fixed the batch axis to {batch_dim}; the model's "
            "forward must not depend on the batch size"
        )
    return OnnxInfo(
        opset=int(opset),
        ir_version=int(model.ir_version),
        input_names=[i.name for i in graph_inputs],
        output_names=[o.name for o in model.graph.output],
        batch_dim=batch_dim,
    )


def export_onnx_file(
    model: nn.Module,
    example_input: torch.Tensor,
    path: Path,
    exporter: str = "dynamo",
    opset: int | None = None,
    external_data: bool | None = None,
    check: bool = True,
) -> OnnxInfo | None:
    """Export ``model`` to ``path`` (fp32) with a dynamic batch axis, then check the file.

    Args:
        model: Plain module in eval mode, on CPU.
        example_input: A batch of at least 2 (a batch of 1 can be specialised away).
        path: Where ``model.onnx`` goes; an external-data file may be written beside it.
        exporter: ``dynamo`` (``torch.export``-based) or ``legacy`` (TorchScript-based).
        opset: ONNX opset; None lets the exporter choose.
        external_data: Store weights in ``<name>.data``; None: only above 100 MiB.
        check: Run :func:`check_onnx_file` and return its info (else return None).

    Raises:
        UsageError: unknown exporter.
        ExportError: the exporter or the checker failed.
    """
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter '{exporter}'; available: {', '.join(EXPORTERS)}")
    import_onnx()
    external = wants_external_data(weight_bytes(model), external_data)
    try:
        with quiet_export():
            if exporter == "dynamo":
                _export_dynamo(model, example_input, path, opset, external)
            else:
                _export_legacy(model, example_input, path, opset)
                if external:
                    save_onnx_model(import_onnx().load(str(path)), path, external_data=True)
    except ToolkitError:
        raise
    except Exception as exc:
        hint = "; try --exporter legacy" if exporter == "dynamo" else ""
        raise ExportError(
            f"ONNX export ({exporter}) of {type(model).__name__} failed: {first_line(exc)}{hint}"
        ) from exc
    return check_onnx_file(path) if check else None


def _export_dynamo(
    model: nn.Module, example: torch.Tensor, path: Path, opset: int | None, external: bool
) -> None:
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        verbose=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        # A named Dim raises if the model ties the batch to a constant; Dim.AUTO would
        # silently specialise it instead.
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        opset_version=opset,
    )
    program.save(str(path), external_data=external)


def _export_legacy(model: nn.Module, example: torch.Tensor, path: Path, opset: int | None) -> None:
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=opset,
    )


def check_finite_outputs(path: Path, example_input: torch.Tensor, what: str) -> None:
    """Run ``path`` in onnxruntime on the example input; raise if any output is inf/NaN."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError(
            f"{what} export needs onnxruntime: pip install onnxruntime"
        ) from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {INPUT_NAME: example_input.numpy()})
    if not all(np.isfinite(out).all() for out in outputs):
        raise ExportError(
            f"the {what} model gives inf/NaN outputs on the example input "
            "(values beyond the precision's range); export it as 'onnx' instead"
        )


def onnx_manifest(
    fmt: Format,
    out_dir: Path,
    example_input: torch.Tensor,
    info: OnnxInfo,
    exporter: str,
    options: dict[str, Any],
    notes: list[str],
) -> Manifest:
    """The manifest of an ONNX-family artifact in ``out_dir``."""
    return fmt.new_manifest(
        out_dir,
        MODEL_FILE,
        example_input,
        input_name=info.input_names[0],
        output_names=info.output_names,
        exporter=exporter,
        opset=info.opset,
        ir_version=info.ir_version,
        options=options,
        notes=notes,
    )


@FORMATS.register("onnx")
class OnnxFormat(Format):
    """fp32 ONNX with a dynamic batch axis, run by onnxruntime.

    :meth:`export` is shared by the ONNX family: :meth:`write` puts ``model.onnx`` in
    place, then the file is checked with ``onnx.checker`` and the manifest is written.
    """

    name = "onnx"
    runtime = "onnxruntime"
    suffix = ".onnx"
    #: What the graph computes in, as :func:`onnx_precision` reads it ("fp32", "fp16", "int8").
    kind: ClassVar[str] = "fp32"
    #: What turns the fp32 export into this format, for the manifest's exporter field.
    tool: ClassVar[str | None] = None
    #: One line for the manifest's notes.
    note: ClassVar[str | None] = None

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
        """Export to ``out_dir/model.onnx`` (+ ``model.onnx.data`` for large models).

        Args:
            model: Plain module in eval mode, on CPU.
            example_input: A batch of at least 2.
            out_dir: Empty folder to write into.
            exporter: ``dynamo`` (default) or ``legacy`` (faster; some models need it).
            opset: ONNX opset; None lets the exporter choose.
            external_data: Force (True) or forbid (False) an external-data file.
            options: This format's own options (see :meth:`write`); others are ignored.
        """
        path = out_dir / MODEL_FILE
        settings = self.write(model, example_input, path, exporter, opset, external_data, **options)
        info = check_onnx_file(path)
        tool = f"torch.onnx.export ({exporter})" + (f" + {self.tool}" if self.tool else "")
        return onnx_manifest(
            self,
            out_dir,
            example_input,
            info,
            tool,
            {"exporter": exporter, "opset": opset, "external_data": external_data, **settings},
            [self.note] if self.note else [],
        )

    def write(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        path: Path,
        exporter: str,
        opset: int | None,
        external_data: bool | None,
        **options: Any,
    ) -> dict[str, Any]:
        """Write the model file at ``path``; return the settings to record in the manifest."""
        export_onnx_file(model, example_input, path, exporter, opset, external_data, check=False)
        return {}


class DerivedOnnxFormat(OnnxFormat):
    """An ONNX format made from a temporary fp32 export (``onnx-fp16``, ``onnx-int8``).

    The fp32 model goes to a temporary folder inside ``out_dir`` and :meth:`derive` writes
    ``model.onnx`` from it, whose outputs on the example input must be finite. Such formats
    are judged by labels and accuracy, not by elementwise tolerances.
    """

    judged_by_labels = True

    def write(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        path: Path,
        exporter: str,
        opset: int | None,
        external_data: bool | None,
        **options: Any,
    ) -> dict[str, Any]:
        """Export fp32 ONNX to a temporary file and derive ``path`` from it."""
        with tempfile.TemporaryDirectory(prefix=".fp32-", dir=path.parent) as tmp:
            fp32 = Path(tmp) / MODEL_FILE
            export_onnx_file(model, example_input, fp32, exporter, opset, external_data=False)
            settings = self.derive(model, fp32, path, external_data, **options)
        check_finite_outputs(path, example_input, self.kind)  # reduced precision can overflow
        return settings

    @abc.abstractmethod
    def derive(
        self,
        model: nn.Module,
        fp32: Path,
        path: Path,
        external_data: bool | None,
        **options: Any,
    ) -> dict[str, Any]:
        """Write ``path`` from the fp32 file; return the settings to record in the manifest."""
