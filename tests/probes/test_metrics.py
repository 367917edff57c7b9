"""Probe metrics on hand-built cases with known answers, and the errors bad input gets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import memsinks
from memsinks.probes import (
    Canary, ExtractionResult, MembershipResult, ProbeSet, SinkGapResult, canary_exposure, exposure_from_rank,
    extraction, membership_inference, memorized_bits, roc_auc, tpr_at_fpr,
)
from memsinks.probes._common import check_same_tokenizer
from memsinks.probes.extraction import exact_match, longest_common_ngram, token_accuracy
from memsinks.probes.membership import _min_k_mean_logprob
from memsinks.probes.skewnormal import SkewNormal
from tests.conftest import tiny_model


class _FixedLogits(torch.nn.Module):
    """A causal 'LM' whose next-token logits are a fixed vector, whatever the input: its likelihoods are known."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone().float())
        self.head = torch.nn.Linear(1, logits.shape[0], bias=False)  # only its shape (the vocabulary) is read

    def forward(self, input_ids, attention_mask=None, **kwargs):
        from types import SimpleNamespace

        B, T = input_ids.shape
        return SimpleNamespace(logits=self.logits.expand(B, T, -1))

    def get_output_embeddings(self):
        return self.head


# ---- extraction metrics -------------------------------------------------------------------------

def test_exact_match_token_accuracy_and_ngram_on_crafted_rows():
    target = np.array([[1, 2, 3, 4, 5, 6, 7, 8]] * 4)
    generated = np.array([
        [1, 2, 3, 4, 5, 6, 7, 8],   # verbatim
        [9, 1, 2, 3, 4, 5, 9, 9],   # the span 1..5 reproduced one position late: 0 aligned hits
        [1, 2, 9, 4, 5, 6, 9, 8],   # 6 aligned hits, longest run 4 5 6
        [9, 9, 9, 9, 9, 9, 9, 9],   # nothing
    ])
    np.testing.assert_array_equal(exact_match(generated, target), [True, False, False, False])
    np.testing.assert_allclose(token_accuracy(generated, target), [1.0, 0.0, 6 / 8, 0.0])
    np.testing.assert_array_equal(longest_common_ngram(generated, target), [8, 5, 3, 0])


def test_longest_common_ngram_matches_brute_force():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 3, (50, 9)), rng.integers(0, 3, (50, 7))

    def brute(x, y):
        best = 0
        for i in range(len(x)):
            for j in range(len(y)):
                k = 0
                while i + k < len(x) and j + k < len(y) and x[i + k] == y[j + k]:
                    k += 1
                best = max(best, k)
        return best

    np.testing.assert_array_equal(longest_common_ngram(a, b), [brute(x, y) for x, y in zip(a, b)])


def test_extraction_result_aggregates_and_serialises_without_tokens():
    per = {"exact_match": np.array([True, False, False, True]), "token_accuracy": np.array([1, 0.5, 0.25, 1.0]),
           "ngram_share": np.array([1, 0.5, 0.25, 1.0]), "generated": np.zeros((4, 2), dtype=np.int64)}
    result = ExtractionResult.from_per_example(per, prefix_len=2, suffix_len=2)
    assert result.exact_match == 0.5 and result.token_accuracy == pytest.approx(0.6875)
    d = result.to_dict()
    assert d["n_extracted"] == 2 and d["n_sequences"] == 4 and "generated" not in d
    json.dumps(d)


# ---- ROC ---------------------------------------------------------------------------------------

def test_auc_of_separable_reversed_and_identical_scores():
    assert roc_auc([5, 6, 7], [1, 2, 3]) == 1.0
    assert roc_auc([1, 2, 3], [5, 6, 7]) == 0.0
    assert roc_auc([1, 1, 1], [1, 1]) == 0.5  # all ties
    rng = np.random.default_rng(0)
    assert abs(roc_auc(rng.normal(size=4000), rng.normal(size=4000)) - 0.5) < 0.02
    # one member tied with one non-member among 2x2: P(m > n) + 0.5 P(tie) = (3 + 0.5) / 4
    assert roc_auc([2, 3], [1, 2]) == pytest.approx(3.5 / 4)


def test_auc_agrees_with_an_independent_implementation():
    metrics = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    pos, neg = rng.integers(0, 10, 300).astype(float), rng.integers(0, 12, 200).astype(float)
    u = metrics.mannwhitneyu(pos, neg, alternative="two-sided").statistic
    assert roc_auc(pos, neg) == pytest.approx(u / (300 * 200))


def test_tpr_at_low_fpr():
    members, nonmembers = [3, 4, 5, 2.5], [0, 1, 2, 3.5]
    assert tpr_at_fpr(members, nonmembers, 0.25) == 1.0   # one false positive allowed: threshold just above 2
    assert tpr_at_fpr(members, nonmembers, 0.0) == 0.5    # none allowed: above 3.5 -> 4 and 5
    assert tpr_at_fpr(members, nonmembers, 0.01) == 0.5   # 1% of 4 non-members rounds down to none
    assert tpr_at_fpr([1.0], [1.0, 1.0], 0.5) == 0.0      # ties with the threshold do not count


def test_membership_result_from_scores():
    result = MembershipResult.from_scores({"loss": np.array([-1.0, -0.5]), "zlib": np.array([0.0, 0.0])},
                                          {"loss": np.array([-3.0, -2.0]), "zlib": np.array([0.0, 0.0])})
    assert result.auc == {"loss": 1.0, "zlib": 0.5}
    assert result.tpr_at_fpr_1pct["loss"] == 1.0 and result.tpr_at_fpr_1pct["zlib"] == 0.0
    assert result.to_dict()["n_members"] == 2


def test_min_k_prob_takes_the_least_likely_tokens():
    nll = np.array([0.1, 5.0, 0.2, 3.0, 0.3, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert _min_k_mean_logprob(nll, 0.2) == pytest.approx(-(5.0 + 3.0) / 2)
    assert _min_k_mean_logprob(nll[:3], 0.2) == pytest.approx(-5.0)  # at least one token


def test_membership_scores_on_a_model_with_known_likelihoods():
    # next-token distribution p = softmax([log 0.5, log 0.25, log 0.25]): token 0 costs 1 bit, tokens 1, 2 cost 2
    model = _FixedLogits(torch.log(torch.tensor([0.5, 0.25, 0.25])))
    members = [[0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]
    nonmembers = [[0, 1, 2, 1, 2], [2, 1, 0, 0, 1]]
    result = membership_inference(model, members, nonmembers)
    ln2 = math.log(2)
    np.testing.assert_allclose(result.member_scores["loss"], [-ln2, -ln2])
    np.testing.assert_allclose(result.nonmember_scores["loss"], [-2 * ln2, -1.5 * ln2])
    assert result.auc["loss"] == 1.0
    # min-k with k=20% of 4 scored tokens keeps the single least likely one
    np.testing.assert_allclose(result.nonmember_scores["minkprob"], [-2 * ln2, -2 * ln2])


# ---- exposure ----------------------------------------------------------------------------------

def test_exposure_from_rank():
    assert exposure_from_rank(1, 1000) == pytest.approx(math.log2(1000))
    assert exposure_from_rank(1000, 1000) == 0.0
    assert exposure_from_rank(250, 1000) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        exposure_from_rank(0, 10)


def test_top_ranked_canary_has_exposure_log2_R_by_enumeration():
    # token 3 is the likeliest after anything: the canary [5, 3, 3] beats every other two-token secret
    logits = torch.zeros(8)
    logits[3], logits[4] = 3.0, 1.0
    model = _FixedLogits(logits)
    top = canary_exposure(model, None, [5], [3, 3], [2, 3, 4, 6])
    assert top.method == "enumeration" and top.rank == 1 and top.exposure == pytest.approx(math.log2(16))
    # a secret's log-likelihood is its logit sum (+ const): [4, 4] (sum 2) is beaten by the 7 pairs with a 3
    # and a 3, 4, 2 or 6 (sums 6, 4, 4, 3, 3, 3, 3): rank 8 of 16 -> 1 bit
    low = canary_exposure(model, None, [5], [4, 4], [2, 3, 4, 6])
    assert low.rank == 8 and low.exposure == pytest.approx(1.0)
    # per-slot alphabets
    result = canary_exposure(model, None, [5], [3, 2], [[3, 4], [2, 6]])
    assert result.log2_space_size == pytest.approx(2.0) and result.rank == 1  # ties with [3, 6] do not count
    with pytest.raises(ValueError, match="not in that slot's alphabet"):
        canary_exposure(model, None, [5], [7], [2, 3])


def test_canary_from_text_and_its_errors():
    c = Canary.from_text("Anna said: my account number is 285268.")
    assert (c.prefix, c.secret, c.suffix) == ("Anna said: my account number is ", "285268", ".")
    assert c.text == "Anna said: my account number is 285268."
    with pytest.raises(ValueError, match="No secret"):
        Canary.from_text("no digits here")
    with pytest.raises(ValueError, match="outside its alphabet"):
        Canary("a", "12x")


def test_skew_normal_logcdf_and_fit_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for alpha in (-4.0, 0.0, 2.0, 6.0):
        dist = SkewNormal(loc=1.0, scale=2.0, alpha=alpha)
        for x in (-10.0, -3.0, 0.0, 1.0, 4.0):
            ref = float(stats.skewnorm.logcdf(x, alpha, loc=1.0, scale=2.0))
            assert dist.logcdf(x) == pytest.approx(ref, rel=1e-4, abs=1e-9)
    samples = stats.skewnorm.rvs(3.0, loc=5.0, scale=2.0, size=50_000, random_state=0)
    fit = SkewNormal.fit(samples)
    assert fit.loc == pytest.approx(5.0, abs=0.1) and fit.scale == pytest.approx(2.0, abs=0.1)
    assert fit.alpha == pytest.approx(3.0, abs=0.6)


# ---- memorized bits and sink gap ---------------------------------------------------------------

def test_memorized_bits_against_uniform_and_model_references():
    vocab = 4
    uniform = _FixedLogits(torch.zeros(vocab))
    peaked = _FixedLogits(torch.log(torch.tensor([0.5, 0.25, 0.125, 0.125])))
    seqs = [[0, 0, 0], [0, 3, 3]]
    # a uniform model holds nothing beyond the uniform reference
    assert memorized_bits(uniform, seqs).total_bits == pytest.approx(0.0, abs=1e-9)
    # peaked model: [0,0,0] costs 2 bits (uniform: 4) -> 2 bits; [0,3,3] costs 6 bits (> 4) -> capped at 0
    result = memorized_bits(peaked, seqs)
    np.testing.assert_allclose(result.per_example["bits"], [2.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(result.per_example["reference_bits"], [4.0, 4.0])
    against_model = memorized_bits(peaked, seqs, reference_model=uniform)
    np.testing.assert_allclose(against_model.per_example["bits"], [2.0, 0.0], atol=1e-9)
    assert against_model.reference == "model" and result.reference == "uniform"


def test_sink_gap_closed_share():
    per = {"member_loss_own": np.array([1.0, 1.0]), "member_loss_drop": np.array([2.0, 2.0]),
           "heldout_loss_own": np.array([3.0, 3.0]), "heldout_loss_drop": np.array([3.0, 3.1])}
    assert SinkGapResult.from_per_example(per).closed == pytest.approx(0.5)
    per["heldout_loss_own"] = np.array([1.0, 1.0])  # no gap: the share is undefined, not NaN or inf
    result = SinkGapResult.from_per_example(per)
    assert result.closed is None and result.to_dict()["closed"] is None


# ---- bad input ---------------------------------------------------------------------------------

def test_short_sequences_and_empty_sets_are_clear_errors():
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match=r"2 of 3 sequences are shorter than 64 tokens"):
        extraction(model, [[1] * 64, [1] * 10, [1] * 63])
    with pytest.raises(ValueError, match="members is empty"):
        membership_inference(model, [], [[1, 2, 3]])
    with pytest.raises(ValueError, match="nonmembers is empty"):
        membership_inference(model, [[1, 2, 3]], [])
    with pytest.raises(TypeError, match="is a string"):
        extraction(model, ["some text"])


def test_reference_model_with_another_vocabulary_is_an_error():
    model, other = tiny_model("gpt2", vocab=128), tiny_model("gpt2", vocab=96)
    with pytest.raises(ValueError, match="another tokenizer"):
        membership_inference(model, [[1, 2, 3]], [[3, 2, 1]], reference_model=other)
    with pytest.raises(ValueError, match="another tokenizer"):
        memorized_bits(model, [[1, 2, 3]], reference_model=other)


def test_tokenizers_with_different_vocabularies_are_an_error():
    from memsinks.corpus import train_tokenizer

    a = train_tokenizer(["the cat sat on the mat"] * 5, vocab_size=280)
    b = train_tokenizer(["a dog ran in the park"] * 5, vocab_size=280)
    check_same_tokenizer(a, a)
    with pytest.raises(ValueError, match="tokenizer differs"):
        check_same_tokenizer(a, b)


def test_probe_set_from_files_and_datasets(tmp_path):
    from datasets import Dataset

    from memsinks.corpus import train_tokenizer

    tok = train_tokenizer(["one two three four", "five six"], vocab_size=280)
    (tmp_path / "a.txt").write_text("one two\n\nthree four\n", encoding="utf-8")
    expected = [tok("one two")["input_ids"], tok("three four")["input_ids"]]
    assert ProbeSet.from_file(tmp_path / "a.txt", tok).tokens == expected
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "five six", "doc_id": "d1"}) + "\n"
                                      + json.dumps({"input_ids": [1, 2, 3], "doc_id": 7}) + "\n", encoding="utf-8")
    ps = ProbeSet.from_file(tmp_path / "b.jsonl", tok)
    assert ps.tokens[1] == [1, 2, 3] and ps.ids == [memsinks.key_id("d1"), memsinks.key_id(7)]
    ds = memsinks.assign_sequence_ids(Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]]}))
    ps = ProbeSet.from_data(ds)
    assert ps.ids == [memsinks.content_id([1, 2, 3]), memsinks.content_id([4, 5])]
    assert ProbeSet([[1, 2]]).ids_or_content() == [memsinks.content_id([1, 2])]
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no sequences"):
        ProbeSet.from_file(tmp_path / "empty.txt", tok)
    (tmp_path / "bad.jsonl").write_text('{"txt": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="needs a 'text'"):
        ProbeSet.from_file(tmp_path / "bad.jsonl", tok)
    with pytest.raises(ValueError, match="pass the tokenizer"):
        ProbeSet.from_data(["text"], None)


def test_memorized_bits_of_a_perfectly_memorized_sequence_is_its_entropy_and_of_an_unseen_one_about_zero():
    """A GPT-2 trained until it predicts 8 random sequences perfectly holds each one's full entropy over the
    uniform distribution, (T - 1) log2 V bits; on random sequences it never saw it holds about none."""
    from tests.conftest import tiny_model

    vocab, T = 64, 12
    gen = torch.Generator().manual_seed(0)
    seen = torch.randint(0, vocab, (8, T), generator=gen)
    unseen = torch.randint(0, vocab, (8, T), generator=gen)
    model = tiny_model("gpt2", vocab=vocab, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(300):
        loss = model(seen, labels=seen).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    entropy = (T - 1) * math.log2(vocab)
    held = memorized_bits(model, seen.tolist())
    np.testing.assert_allclose(held.per_example["reference_bits"], entropy)
    assert held.per_example["bits"].min() > 0.99 * entropy and held.per_example["bits"].max() <= entropy + 1e-6
    fresh = memorized_bits(model, unseen.tolist())
    assert fresh.total_bits < 0.02 * 8 * entropy  # of 528 bits of entropy, next to nothing
