"""The memorization benchmark: its goldfish and dedup baselines, its near-duplicate copies and its summary
logic on hand-built cases, and a smoke run of ``benchmarks/memorization.py --quick`` that checks the
files and fields it writes (not the science: the quick run is too small for that)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import memsinks  # noqa: E402
from memorization_lib import report  # noqa: E402
from memorization_lib.arms import plan_arms  # noqa: E402
from memorization_lib.dedup import (  # noqa: E402
    MinHashSettings, cluster_ids, dedup_report, deduplicate, exact_clusters, minhash_clusters,
)
from memorization_lib.goldfish import GoldfishCollator, goldfish_drop_mask  # noqa: E402
from memorization_lib.near_duplicates import TokenSwapper, content_ids, origins, source_ids  # noqa: E402
from memorization_lib.settings import Scenario3Settings  # noqa: E402
from memsinks._memorization_corpus import Source, stream_rows  # noqa: E402

S1_ARMS = ["standard", "dedup", "goldfish", "dp", "memsinks_drop", "memsinks_own", "memsinks_mean"]
S3_ARMS = ["standard", "dedup", "dedup_minhash", "goldfish", "dp", "memsinks_drop", "memsinks_mean", "memsinks_own"]
FIELDS = ["heldout_loss", "repeated_loss", "gap", "extraction_exact", "token_accuracy", "mia_auc", "canary_exposure",
          "tokens_per_s"]
S3_FIELDS = ["general_heldout_loss", "domain_heldout_loss"] + FIELDS[1:]

# a long paragraph (100 words) and other paragraphs that share its vocabulary but not its word order
_WORDS = ("the cat sat on a mat near the old mill while Anna read her letter from Leeds dated 12 March and "
          "Ben counted 47 boxes of red apples for the market on the hill").split()


def _paragraph(seed: int, n: int = 100) -> list[str]:
    import random

    rng = random.Random(seed)
    return [rng.choice(_WORDS) for _ in range(n)]


def _with(words: list[str], changes: dict[int, str]) -> str:
    return " ".join(changes.get(i, w) for i, w in enumerate(words))


def test_minhash_finds_near_duplicates_that_exact_dedup_misses_and_keeps_distinct_texts():
    base = _paragraph(0)
    near = [_with(base, {}), _with(base, {10: "Clara"}), _with(base, {50: "1999"}), _with(base, {90: "pears"})]
    distinct = [_with(_paragraph(s), {}) for s in (1, 2, 3)]
    texts = near + distinct + [near[0]]  # an exact copy too
    clusters = minhash_clusters(texts, MinHashSettings())
    assert clusters[:4] == [0, 0, 0, 0]  # one edited word in 100: Jaccard of 5-gram shingles ~0.9 > 0.8
    assert clusters[4:7] == [4, 5, 6]  # same words, other order: kept apart
    assert clusters[7] == 0
    exact = exact_clusters([t.split() for t in texts])  # rows of "tokens" (words)
    assert exact == [0, 1, 2, 3, 4, 5, 6, 0]  # exact dedup finds only the verbatim copy
    # many edits push a copy below the threshold: it stays apart
    far = _with(base, {i: "Zoe" for i in range(0, 100, 10)})
    assert minhash_clusters([near[0], far])[1] == 1


def test_minhash_rejects_a_threshold_outside_0_1():
    with pytest.raises(ValueError, match="threshold must be in"):
        minhash_clusters(["a b c"], MinHashSettings(threshold=1.0))


def test_dedup_report_counts_found_missed_and_false_merges_against_true_origins():
    # rows 0-3: copies of origin 7 (row 3 missed by the dedup); rows 4, 5: distinct origins 8, 9 merged by mistake
    origins_ = [7, 7, 7, 7, 8, 9]
    clusters = [0, 0, 0, 3, 4, 4]
    r = dedup_report(clusters, origins_, {"repeated": {7}, "other": {8, 9}})
    assert r["repeated"] == {"rows": 4, "redundant_copies": 3, "removed": 2, "found": 2, "missed": 1,
                             "false_merges": 0, "recall": 2 / 3, "copies_left_per_origin": 2.0}
    assert r["other"]["redundant_copies"] == 0 and r["other"]["false_merges"] == 1 and r["other"]["recall"] is None
    assert r["other"]["copies_left_per_origin"] == 0.5  # one of the two distinct rows is gone


@pytest.fixture(scope="module")
def word_tokenizer():
    from memsinks.corpus import train_tokenizer

    texts = [" ".join(_paragraph(s)) for s in range(20)] + ["0123456789 Clara Zoe Hugo pears"]
    return train_tokenizer(texts, vocab_size=300)


def test_token_swapper_changes_a_few_tokens_of_the_same_kind_names_and_numbers_first(word_tokenizer):
    import random

    tok = word_tokenizer
    swapper = TokenSwapper.from_tokenizer(tok)
    row = tok(" ".join(_paragraph(0, 60)))["input_ids"]
    first = {i for i, t in enumerate(row) if swapper.kinds.get(t) in ("digit", "capitalized")}
    assert 3 <= len(first)
    rng = random.Random(0)
    for _ in range(20):
        copy = swapper.copy(row, 3, rng)
        changed = [i for i, (a, b) in enumerate(zip(row, copy)) if a != b]
        assert len(copy) == len(row) and len(changed) == 3
        assert set(changed) <= first  # names and numbers first
        assert all(swapper.kinds[copy[i]] == swapper.kinds[row[i]] for i in changed)
    more = swapper.copy(row, len(first) + 2, rng)  # more edits than names and numbers: lowercase words too
    assert sum(a != b for a, b in zip(row, more)) == len(first) + 2
    with pytest.raises(ValueError, match="swappable tokens"):
        swapper.copy(row[:3], 10, rng)


def test_copies_of_a_row_are_distinct_and_take_one_edit_more_when_a_row_runs_out_of_variants():
    # a row with two swappable digits, each with two other digits to become: 4 one-edit variants, 4 two-edit ones
    swapper = TokenSwapper(kinds={1: "digit", 2: "digit", 3: "digit"}, pools={"digit": [1, 2, 3]})
    row = [1, 9, 9, 2]
    copies = swapper.copies([row], 6, 0.01, seed=0)
    assert len({tuple(c) for c in copies.rows} | {tuple(row)}) == 7  # all distinct, none equal to the row
    edits = [sum(a != b for a, b in zip(c, row)) for c in copies.rows]
    assert edits[:4] == [1, 1, 1, 1] and edits[4:] == [2, 2]
    assert all(c[1:3] == [9, 9] for c in copies.rows)  # only the digits change
    with pytest.raises(ValueError, match="swappable tokens"):
        swapper.copies([row], 9, 0.01, seed=0)  # 8 variants in all: a 9th copy would need a third swappable token


def test_near_duplicate_copies_are_keyed_by_their_source_and_each_id_choice_keys_them_as_documented(word_tokenizer):
    tok = word_tokenizer
    swapper = TokenSwapper.from_tokenizer(tok)
    rows = [tok(" ".join(_paragraph(s, 60)))["input_ids"] for s in (0, 1)]
    unique = [tok(" ".join(_paragraph(s, 60)))["input_ids"] for s in (5, 6, 7)]
    copies = swapper.copies(rows, 4, 0.05, seed=0)
    assert len(copies.rows) == 8 and copies.repeats == 1
    assert copies.ids == [memsinks.content_id(rows[0])] * 4 + [memsinks.content_id(rows[1])] * 4
    assert len({tuple(c) for c in copies.rows}) == 8
    assert all(sum(a != b for a, b in zip(c, rows[i // 4])) == swapper.edits_for(rows[i // 4], 0.05)
               for i, c in enumerate(copies.rows))
    assert copies.rows != swapper.copies(rows, 4, 0.05, seed=1).rows and copies.rows == swapper.copies(
        rows, 4, 0.05, seed=0).rows
    stream = [Source(unique), copies]
    keyed = source_ids(stream)
    assert keyed[0].ids == [memsinks.content_id(r) for r in unique] and keyed[1].ids == copies.ids
    assert all(s.ids is None for s in content_ids(stream))
    assert origins(stream) == keyed[0].ids + copies.ids


def test_plans_reuse_the_standard_arm_when_exact_dedup_finds_nothing_and_key_memsinks_by_source(word_tokenizer):
    tok = word_tokenizer
    swapper = TokenSwapper.from_tokenizer(tok)
    # 100-word rows, one swap per copy: two copies share ~0.8 of their 5-gram shingles, so MinHash joins most
    rows = [tok(" ".join(_paragraph(s, 100)))["input_ids"] for s in (0, 1)]
    unique = [tok(" ".join(_paragraph(s, 100)))["input_ids"] for s in (5, 6, 7)]
    stream = [Source(unique), swapper.copies(rows, 6, 0.005, seed=0)]
    s = Scenario3Settings.quick()
    groups = {"repeated": {memsinks.content_id(r) for r in rows}, "unique": {memsinks.content_id(r) for r in unique}}
    arms = ["standard", "dedup", "dedup_minhash", "memsinks", "memsinks_content_ids", "memsinks_minhash_ids"]
    plans, reports = plan_arms(arms, stream, tok, s, groups)
    by = {p.name: p for p in plans}
    assert by["dedup"].same_as == "standard"  # every copy differs: exact dedup trains exactly the standard stream
    assert reports["dedup"]["repeated"]["found"] == 0 and reports["dedup"]["repeated"]["redundant_copies"] == 10
    assert by["dedup_minhash"].same_as is None
    assert reports["dedup_minhash"]["repeated"]["found"] > 0 and reports["dedup_minhash"]["unique"]["removed"] == 0
    kept = len(stream_rows(by["dedup_minhash"].sources))
    assert kept == len(stream_rows(stream)) - reports["dedup_minhash"]["repeated"]["removed"]
    assert by["memsinks"].method == "sinks" and by["memsinks"].modes == ("drop", "own", "mean")
    assert by["memsinks"].sources[1].ids == stream[1].ids
    assert all(src.ids is None for src in by["memsinks_content_ids"].sources)
    # cluster IDs: copies MinHash put together share an ID, the first row of each cluster's content ID
    _, clusters = deduplicate(stream, "minhash", tok, s.minhash)
    ids = by["memsinks_minhash_ids"].sources[0].ids
    flat = stream_rows(stream)
    assert ids == [memsinks.content_id(flat[c]) for c in clusters] == cluster_ids(stream, clusters)[0].ids


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


def test_scenario3_targets_on_hand_built_numbers():
    def arm(general, domain, rep, ext=0.0):
        return {"general_heldout_loss": general, "domain_heldout_loss": domain, "repeated_loss": rep,
                "gap": domain - rep, "extraction_exact": ext}

    arms = {"standard": arm(3.0, 1.0, 0.2, ext=0.9), "dedup": arm(2.9, 1.3, 1.25),
            "memsinks_drop": arm(3.05, 1.01, 0.85, ext=0.05), "memsinks_own": arm(3.1, 1.05, 0.1)}
    t = report.scenario3_targets(report.summarize_seeds([{"arms": arms, "data": {}}]))
    assert t["gap_closed"]["met"] and t["gap_closed"]["value"] == pytest.approx(1 - 0.16 / 0.8)
    assert t["domain_heldout_loss"]["met"] and t["domain_heldout_loss"]["value"] == pytest.approx(0.01)
    assert t["domain_vs_dedup"]["met"] and t["general_heldout_loss"]["met"] and t["extraction"]["met"]
    assert not t["tradeoff_vs_dedup"]["met"] and "neither dominates" in t["tradeoff_vs_dedup"]["statement"]
    arms["memsinks_drop"] = arm(3.1, 1.35, 0.8, ext=0.5)
    t = report.scenario3_targets(report.summarize_seeds([{"arms": arms, "data": {}}]))
    assert not t["domain_vs_dedup"]["met"] and not t["general_heldout_loss"]["met"]
    assert not t["domain_heldout_loss"]["met"] and not t["extraction"]["met"]


def test_scenarios_argument_runs_the_named_scenarios_in_order_and_rejects_unknown_ones():
    import memorization

    assert memorization.parse_args(["--scenarios", "3", "--out", "x"]).scenarios == ["3"]
    assert memorization.parse_args(["--scenarios", "3n,1, 3", "--out", "x"]).scenarios == ["1", "3", "3n"]
    assert memorization.parse_args(["--out", "x"]).scenarios == list(memorization.SCENARIOS)
    with pytest.raises(SystemExit):
        memorization.parse_args(["--scenarios", "4", "--out", "x"])


@pytest.mark.slow
def test_quick_benchmark_writes_results_table_and_plots(tmp_path):
    out = tmp_path / "bench"
    # one torch thread: the suite may share the CPU with other jobs, where two threads spin against each other
    cmd = [sys.executable, str(REPO / "benchmarks" / "memorization.py"), "--quick", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert {"scenario1", "scenario1_near_duplicates", "scenario2", "scenario3", "scenario3_near_duplicates", "config",
            "machine"} <= set(results)
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
    s3 = results["scenario3"]
    expected = S3_ARMS if "dp" not in s3.get("skipped_arms", {}) else [a for a in S3_ARMS if a != "dp"]
    assert set(expected) <= set(s3["arms"])
    for arm in expected:
        for field in S3_FIELDS:
            value = s3["arms"][arm][field]
            assert isinstance(value, float) and value == value, (arm, field)
            assert s3["arms"][arm][f"{field}_std"] >= 0.0
    assert isinstance(s3["memsinks_gap_closed"], float)
    assert {"gap_closed", "domain_heldout_loss", "domain_vs_dedup", "general_heldout_loss", "extraction",
            "tradeoff_vs_dedup", "tradeoff_vs_dedup_minhash"} <= set(s3["targets"])
    # exact repeats: both dedups find every copy of every story and canary
    for name in ("dedup", "dedup_minhash"):
        assert s3["dedup"][name]["domain"]["found"] == s3["dedup"][name]["domain"]["redundant_copies"] > 0
        assert s3["dedup"][name]["domain"]["copies_left_per_origin"] == 1.0
    for key, fields in (("scenario1_near_duplicates", FIELDS[:6]), ("scenario3_near_duplicates", S3_FIELDS[:7])):
        nd = results[key]
        assert {"standard", "dedup", "dedup_minhash", "memsinks_drop", "memsinks_own",
                "memsinks_mean"} <= set(nd["arms"])
        for arm in nd["arms"]:
            for field in fields:
                assert isinstance(nd["arms"][arm][field], float), (key, arm, field)
        part = "repeated" if key.startswith("scenario1") else "domain"
        exact, minhash = nd["dedup"]["dedup"][part], nd["dedup"]["dedup_minhash"][part]
        for r in (exact, minhash):
            assert r["found"] + r["missed"] == r["redundant_copies"] > 0
            assert r["removed"] == r["found"] + r["false_merges"]
        # near-copies differ: exact dedup misses most of them and leaves several copies of each sequence, while
        # MinHash finds at least what exact dedup finds (identical rows always share a MinHash cluster)
        assert exact["found"] < exact["redundant_copies"] / 2 and exact["copies_left_per_origin"] > 1.0
        assert minhash["found"] >= exact["found"]
        assert any(x.startswith("exact dedup removed") for x in nd["findings"])
        assert any(x.startswith("MinHash-LSH dedup removed") for x in nd["findings"])
        d = nd["data"]
        assert d["edits_per_copy"] >= 1 and 0.0 < d["shingle_jaccard_to_source"] < 1.0
        assert d["near_duplicate_rate"] == results["config"][key.split("_")[0]]["near_duplicate_rate"]
    assert "memsinks_content_ids_drop" in results["scenario3_near_duplicates"]["arms"]
    md = (out / "results.md").read_text()
    assert "| memsinks_drop |" in md and "Targets" in md and "## Scenario 3" in md and "near-duplicate variant" in md
    for stem in ("scenario1", "scenario2", "scenario3", "scenario1_near_duplicates", "scenario3_near_duplicates"):
        for png in (f"{stem}_tradeoff.png", f"{stem}_curves.png"):
            assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
