"""``benchmarks/dsp_extraction.py --quick``: the smoke run writes the documented result fields."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_benchmark


@pytest.mark.slow
def test_dsp_benchmark_quick_writes_results(tmp_path):
    run_benchmark("dsp_extraction", ["--quick", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["quick"] and result["data"]["disjoint"]
    assert set(result["models"]) == {"standard", "memsinks_drop", "memsinks_own"}
    for row in result["models"].values():
        assert row["n_attack"] > 0 and row["n_eval"] == result["data"]["repeated_windows"]
        for kind in ("no_prompt", "static", "dsp", "overlap_static", "overlap_dsp", "heldout_overlap_dsp"):
            for metric in ("exact_match", "token_accuracy", "ngram_share"):
                assert 0.0 <= row[kind][metric] <= 1.0
    text = (tmp_path / "results.md").read_text()
    assert "| standard | DSP (shifted) |" in text and "| memsinks_drop | DSP (overlap) |" in text
