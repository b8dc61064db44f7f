"""Root conftest: ``pytest --benchmark-only`` runs the pytest-benchmark suite.

``testpaths`` is ``tests``, so a bare ``pytest`` (``make test``) collects the unit tests
only. With ``--benchmark-only`` and no paths on the command line, collection switches to
``benchmarks/`` instead, so that run holds exactly the benchmark suite. Paths given on the
command line are always collected as given.
"""

from __future__ import annotations

from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent / "benchmarks"


def pytest_configure(config: pytest.Config) -> None:
    """Point a path-less ``--benchmark-only`` run at ``benchmarks/``."""
    from_testpaths = config.args_source == pytest.Config.ArgsSource.TESTPATHS
    if from_testpaths and config.getoption("benchmark_only", default=False):
        config.args[:] = [str(BENCHMARKS)]
