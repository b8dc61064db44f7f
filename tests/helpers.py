"""Helpers shared by the tests (import as ``from helpers import ...``).

Kept out of ``conftest.py``: the repository root has a ``conftest.py`` of its own, and two
modules named ``conftest`` on ``sys.path`` would shadow each other.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# Unpacked data goes to a temporary cache, never the user's (set before anything looks).
# The cache made here (~53 MB of unpacked Fashion-MNIST) goes when the session ends; child
# processes inherit the variable, so only the process that made it removes it.
if "TOOLKIT_CACHE" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="toolkit-test-cache-")
    os.environ["TOOLKIT_CACHE"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m toolkit ARGS`` as a user would; capture output."""
    return subprocess.run(
        [sys.executable, "-m", "toolkit", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def real_data_available() -> bool:
    """True when Fashion-MNIST can be found offline (cache or Debian package)."""
    from toolkit.data import locate_data
    from toolkit.errors import DataError

    try:
        locate_data("fashion-mnist", download=False)
    except DataError:
        return False
    return True


requires_real_data = pytest.mark.skipif(
    not real_data_available(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
