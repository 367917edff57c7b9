"""``benchmarks/capacity.py --quick``: the smoke run writes its files with the documented fields."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_benchmark


@pytest.mark.slow
def test_capacity_quick_writes_results_table_and_plot(tmp_path):
    run_benchmark("capacity", ["--quick", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["bits_per_param"] > 0
    assert result["dtype"] == "float32" and result["settings"]["quick"]
    for run in result["runs"]:
        assert 0 <= run["bits"] <= run["dataset_bits"] + 1e-6
    assert len(result["plateaus"]) == 1
    for row in result["sinks"]:
        assert row["bits_in_sinks"] == pytest.approx(row["bits_own"] - row["bits_drop"])
    assert "bits/parameter" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "capacity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
