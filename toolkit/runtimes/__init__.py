"""Runners, one file per runtime, registered by name in ``RUNTIMES``."""

from __future__ import annotations

from toolkit.runtimes import eager as _eager  # noqa: F401  (registers)
from toolkit.runtimes.base import RUNTIMES, Runner

__all__ = ["RUNTIMES", "Runner"]
