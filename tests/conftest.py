"""Shared fixtures: small IDX data sets, a trained tiny run, CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from idx import write_idx_dataset

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# Unpacked data goes to a temporary cache, never the user's (set before anything looks).
os.environ["TOOLKIT_CACHE"] = tempfile.mkdtemp(prefix="toolkit-test-cache-")


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with small uncompressed IDX files (480 train, 120 test)."""
    return write_idx_dataset(tmp_path_factory.mktemp("idx"))


@pytest.fixture(scope="session")
def idx_gz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with small gzipped IDX files."""
    return write_idx_dataset(tmp_path_factory.mktemp("idxgz"), compress=True)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, idx_dir: Path) -> Path:
    """A run folder of the mlp trained for 2 short epochs on the small IDX data."""
    from toolkit.train import train

    out = tmp_path_factory.mktemp("runs")
    result = train(
        model="mlp",
        data_dir=str(idx_dir),
        max_epochs=2,
        output_dir=str(out),
        run_name="tiny",
        trainer={"accelerator": "cpu", "devices": 1},
    )
    return Path(result.run_dir)


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
