"""Runners, one file per runtime, registered by name in ``RUNTIMES``."""

from __future__ import annotations

from toolkit.runtimes import compile as _compile  # noqa: F401  (registers)
from toolkit.runtimes import cudagraph as _cudagraph  # noqa: F401  (registers)
from toolkit.runtimes import eager as _eager  # noqa: F401  (registers)
from toolkit.runtimes import exported_program as _exported_program  # noqa: F401  (registers)
from toolkit.runtimes import onnxruntime as _onnxruntime  # noqa: F401  (registers)
from toolkit.runtimes import torchscript as _torchscript  # noqa: F401  (registers)
from toolkit.runtimes.base import RUNTIMES, Runner

__all__ = ["RUNTIMES", "Runner"]
