"""The memorization benchmark: its goldfish baseline and its summary logic on hand-built cases, and a
smoke run of ``benchmarks/memorization.py --quick`` that checks the files and fields it writes
(not the science: the quick run is too small for that)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

from memorization_lib import report  # noqa: E402
from memorization_lib.goldfish import GoldfishCollator, goldfish_drop_mask  # noqa: E402

S1_ARMS = ["standard", "dedup", "goldfish", "dp", "memsinks_drop", "memsinks_own", "memsinks_mean"]
FIELDS = ["heldout_loss", "repeated_loss", "gap", "extraction_exact", "token_accuracy", "mia_auc", "canary_exposure",
          "tokens_per_s"]


def test_goldfish_drops_the_same_positions_at_every_repetition_and_about_one_in_k():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 500, (8, 200), generator=g)
    mask = torch.ones_like(x)
    drop = goldfish_drop_mask(x, mask, k=4, h=13)
    assert not drop[:, :13].any()  # no full context before position h
    share = drop[:, 13:].float().mean().item()
    assert 0.2 < share < 0.3  # 1/k of the positions with a full context
    # the same text elsewhere in a batch (a repetition) has exactly the same positions dropped
    again = goldfish_drop_mask(torch.cat([x[3:4], x[0:1]]), torch.ones(2, 200, dtype=torch.long), k=4, h=13)
    assert torch.equal(again[0], drop[3]) and torch.equal(again[1], drop[0])
    # a dropped position depends only on the h tokens before it: change a token far before, same decision
    y = x.clone()
    y[:, 0] = (y[:, 0] + 1) % 500
    assert torch.equal(goldfish_drop_mask(y, mask, 4, 13)[:, 14:], drop[:, 14:])


def test_goldfish_collator_masks_only_real_tokens_and_keeps_padding_masked():
    def inner(features):
        T = max(len(f["input_ids"]) for f in features)
        ids = torch.zeros(len(features), T, dtype=torch.long)
        am = torch.zeros_like(ids)
        for i, f in enumerate(features):
            ids[i, :len(f["input_ids"])] = torch.tensor(f["input_ids"])
            am[i, :len(f["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": am, "labels": ids.masked_fill(am == 0, -100)}

    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(1, 300, (n,), generator=g).tolist() for n in (120, 40)]
    batch = GoldfishCollator(inner, k=3, h=5)([{"input_ids": r} for r in rows])
    drop = goldfish_drop_mask(batch["input_ids"], batch["attention_mask"], 3, 5)
    assert torch.equal(batch["labels"] == -100, drop | (batch["attention_mask"] == 0))
    assert not drop[1, 40:].any()


def test_goldfish_rejects_k_below_two():
    with pytest.raises(ValueError, match="k must be >= 2"):
        goldfish_drop_mask(torch.zeros(1, 20, dtype=torch.long), torch.ones(1, 20, dtype=torch.long), k=1)


def test_aggregate_gives_mean_and_sample_std_siblings_recursively():
    out = report.aggregate([{"a": 1.0, "b": {"c": 2.0}, "name": "x"}, {"a": 3.0, "b": {"c": 4.0}, "name": "x"}])
    assert out["a"] == 2.0 and out["a_std"] == pytest.approx(2 ** 0.5)
    assert out["b"]["c"] == 3.0 and out["b"]["c_std"] == pytest.approx(2 ** 0.5)
    assert out["name"] == "x"
    single = report.aggregate([{"a": 5.0}])
    assert single == {"a": 5.0, "a_std": 0.0}


def _arm(held, rep, ext=0.0):
    return {"heldout_loss": held, "repeated_loss": rep, "gap": held - rep, "extraction_exact": ext}


def test_gap_closed_and_targets_on_hand_built_numbers():
    arms = {"standard": _arm(3.0, 1.0, ext=0.8), "memsinks_drop": _arm(3.03, 2.53, ext=0.05),
            "memsinks_own": _arm(3.05, 0.5), "dedup": _arm(3.1, 2.9), "goldfish": _arm(3.04, 1.5)}
    assert report.gap_closed(arms) == pytest.approx(1 - 0.5 / 2.0)
    assert report.sink_gap_closed(arms) == pytest.approx((2.53 - 0.5) / (3.05 - 0.5))
    summary = report.summarize_seeds([{"arms": arms, "data": {}}])
    t = report.targets(summary)
    assert t["gap_closed"]["met"]  # exactly 75%
    assert t["heldout_loss"]["met"]  # +1.0%
    assert t["extraction"]["met"]  # 0.05 <= 0.08
    assert not t["tradeoff_vs_dedup"]["met"]  # dedup has the smaller gap, memsinks the lower held-out loss
    assert t["tradeoff_vs_goldfish"]["met"]  # memsinks better on both
    arms["memsinks_drop"] = _arm(3.1, 1.5, ext=0.5)
    t = report.targets(report.summarize_seeds([{"arms": arms, "data": {}}]))
    assert not t["gap_closed"]["met"] and not t["heldout_loss"]["met"] and not t["extraction"]["met"]
    assert "NOT MET" in t["gap_closed"]["statement"]


@pytest.mark.slow
def test_quick_benchmark_writes_results_table_and_plots(tmp_path):
    out = tmp_path / "bench"
    # one torch thread: the suite may share the CPU with other jobs, where two threads spin against each other
    cmd = [sys.executable, str(REPO / "benchmarks" / "memorization.py"), "--quick", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert {"scenario1", "scenario2", "config", "machine"} <= set(results)
    assert results["config"]["quick"] is True and len(results["config"]["seeds"]) == 1
    s1 = results["scenario1"]
    expected = S1_ARMS if "dp" not in s1.get("skipped_arms", {}) else [a for a in S1_ARMS if a != "dp"]
    assert set(expected) <= set(s1["arms"])
    for arm in expected:
        for field in FIELDS:
            value = s1["arms"][arm][field]
            assert isinstance(value, float) and value == value, (arm, field)
            assert s1["arms"][arm][f"{field}_std"] >= 0.0
    assert isinstance(s1["memsinks_gap_closed"], float) and "memsinks_gap_closed_std" in s1
    assert {"gap_closed", "heldout_loss", "extraction", "tradeoff_vs_dedup", "tradeoff_vs_goldfish"} <= set(s1["targets"])
    assert all(isinstance(t["met"], bool) and t["statement"] for t in s1["targets"].values())
    s2 = results["scenario2"]
    lora = [a for a in s2["arms"] if a.startswith("lora_")]
    assert {"lora_qk_r4", "lora_vo_r4"} <= set(lora)
    for arm in ["standard", "memsinks_drop", "memsinks_own"] + lora:
        for field in FIELDS + ["memorized_bits"]:
            assert field in s2["arms"][arm] and f"{field}_std" in s2["arms"][arm], (arm, field)
        assert set(s2["arms"][arm]["by_repeats"]) == {"1", "8"}
    md = (out / "results.md").read_text()
    assert "| memsinks_drop |" in md and "Targets" in md
    for png in ("scenario1_tradeoff.png", "scenario1_curves.png", "scenario2_tradeoff.png", "scenario2_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
