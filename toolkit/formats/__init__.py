"""Exporters, one file per format, registered by name in ``FORMATS``."""

from __future__ import annotations

from toolkit.formats import exported_program as _exported_program  # noqa: F401  (registers)
from toolkit.formats import onnx as _onnx  # noqa: F401  (registers)
from toolkit.formats import onnx_fp16 as _onnx_fp16  # noqa: F401  (registers)
from toolkit.formats import onnx_int8 as _onnx_int8  # noqa: F401  (registers)
from toolkit.formats import torchscript as _torchscript  # noqa: F401  (registers)
from toolkit.formats.base import FORMATS, Format

__all__ = ["FORMATS", "Format"]
