"""``benchmarks/capacity.py --quick``: the smoke run writes its files with the documented fields."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_capacity_quick_writes_results_table_and_plot(tmp_path, monkeypatch):
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import capacity

    monkeypatch.chdir(REPO)
    threads = torch.get_num_threads()
    try:  # in this process: a fresh interpreter would spend seconds importing torch and transformers again
        capacity.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
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
