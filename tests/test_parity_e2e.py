"""End-to-end parity (``tox -e parity``): train briefly on real Fashion-MNIST, export every
registered format and verify it on the full 10,000-image test split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import requires_real_data

from toolkit.formats import FORMATS
from toolkit.parity import verify_command

pytestmark = [pytest.mark.parity, requires_real_data]


@pytest.fixture(scope="module")
def run_and_exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from toolkit.export import export_model
    from toolkit.models import input_shape_of
    from toolkit.train import train

    root = tmp_path_factory.mktemp("parity-e2e")
    result = train(
        model="mlp",
        max_epochs=1,
        output_dir=str(root / "runs"),
        run_name="mlp",
        trainer={"accelerator": "cpu", "devices": 1, "limit_train_batches": 100},
    )
    net = result.model
    example = torch.rand(2, *input_shape_of(net), generator=torch.Generator().manual_seed(0))
    exports = root / "exports" / "mlp"
    manifests = export_model(net, example, FORMATS.names(), exports)
    assert set(manifests) == set(FORMATS.names())
    return Path(result.run_dir), exports


def test_every_format_passes_on_the_full_test_split(run_and_exports) -> None:
    run_dir, exports = run_and_exports
    report = verify_command(str(run_dir / "model.ckpt"), str(exports), threads=2)
    assert report.passed  # verify_command raises naming the failing rows otherwise
    assert report.samples == 10_000 and report.split == "test"
    assert report.reference_accuracy > 0.7, report.reference_accuracy

    rows = {row.name: row for row in report.rows}
    table = "\n".join(f"{r.name}: {r.to_json()}" for r in report.rows)
    assert {row.format for row in report.rows} >= set(FORMATS.names()), table
    assert "onnx[onnxruntime-iobinding]" in rows, table
    for row in report.rows:
        assert row.status == "PASS", row.summary()
        assert row.samples > 10_000 and row.batch_sizes == [1, 7, 256], table
        if not row.tolerances.judged_by_labels:
            assert row.agreement == 1.0 and row.flipped == 0, row.summary()
    int8 = rows["onnx-int8"]
    assert int8.accuracy_delta >= -0.005, int8.summary()

    saved = json.loads((exports / "parity.json").read_text())
    assert saved["passed"] is True and len(saved["rows"]) == len(report.rows)
    assert (exports / "parity.md").read_text().startswith("# Parity report: PASS")
