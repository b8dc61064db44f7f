"""Shared fixtures: small IDX data sets and a trained tiny run."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import helpers  # noqa: F401  (sets TOOLKIT_CACHE before anything reads it)
from idx import write_idx_dataset


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


class Shapeless(torch.nn.Module):
    """A classifier of 12 features that declares no ``input_shape``."""

    def __init__(self, features: int = 12) -> None:
        super().__init__()
        self.features = features
        self.layer = torch.nn.Linear(features, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


@pytest.fixture
def shapeless_weights(tmp_path: Path) -> Iterator[Path]:
    """A state_dict ``.pt`` of :class:`Shapeless`, registered as ``shapeless`` meanwhile."""
    from toolkit.models import MODELS

    MODELS.register("shapeless")(Shapeless)
    try:
        torch.manual_seed(0)
        path = tmp_path / "shapeless.pt"
        torch.save(Shapeless().state_dict(), path)
        yield path
    finally:
        MODELS._items.pop("shapeless", None)
