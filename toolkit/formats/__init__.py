"""Exporters, one file per format, registered by name in ``FORMATS``."""

from __future__ import annotations

from toolkit.formats.base import FORMATS, Format

__all__ = ["FORMATS", "Format"]
