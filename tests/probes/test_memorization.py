"""The probes on a tiny model that memorized a repeated canary and its training stories, and on one that did not."""

from __future__ import annotations

import math

import pytest
import torch

import memsinks
from memsinks.corpus import make_demo_corpus, train_tokenizer
from memsinks.probes import (
    canary_exposure, extraction, membership_inference, memorized_bits, sink_gap,
)


def _encode(tok, text):
    return [tok.eos_token_id] + tok(text)["input_ids"] + [tok.eos_token_id]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread; two spin-waiting threads on a busy 2-core machine run 30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(one_thread):
    """A 2-layer GPT-2 trained 200 steps on 96 short stories plus one canary repeated 32 times (seconds)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    corpus = make_demo_corpus(n_train=96, n_repeated=0, n_heldout=48, n_canaries=2, sentences=2, canary_digits=3,
                              seed=3)
    tok = train_tokenizer(corpus.train + corpus.canaries, vocab_size=384)
    seen, unseen = corpus.canaries
    rows = [_encode(tok, t) for t in corpus.train] + [_encode(tok, seen)] * 32
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=256, vocab_size=len(tok),
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                       bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(200):
        batch = [rows[i] for i in torch.randint(len(rows), (12,), generator=gen).tolist()]
        T = max(map(len, batch))
        x = torch.full((len(batch), T), tok.eos_token_id)
        labels = torch.full((len(batch), T), -100)
        for i, r in enumerate(batch):
            x[i, :len(r)] = torch.tensor(r)
            labels[i, :len(r)] = torch.tensor(r)
        loss = model(x, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return dict(model=model, tok=tok, corpus=corpus, seen=seen, unseen=unseen)


def _canary_tokens(tok, text):
    """(prefix, secret, suffix) token lists of ``eos + text + eos``, split around the 3-digit secret."""
    canary = memsinks.probes.Canary.from_text(text)
    prefix = [tok.eos_token_id] + tok(canary.prefix)["input_ids"]
    secret = [tok.convert_tokens_to_ids(d) for d in canary.secret]
    suffix = tok(canary.suffix)["input_ids"] + [tok.eos_token_id]
    assert prefix + secret + suffix == _encode(tok, text)  # digits are single tokens, so the split is exact
    return prefix, secret, suffix


def test_repeated_canary_is_extracted_and_unseen_one_is_not(trained):
    tok = trained["tok"]
    for text, expected in ((trained["seen"], True), (trained["unseen"], False)):
        prefix, secret, suffix = _canary_tokens(tok, text)
        full = prefix + secret + suffix
        result = extraction(trained["model"], [full], prefix_len=len(prefix), suffix_len=len(secret) + len(suffix))
        assert bool(result.per_example["exact_match"][0]) is expected, text


def test_repeated_canary_has_top_exposure_and_unseen_one_low(trained):
    tok, model = trained["tok"], trained["model"]
    digits = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    results = {}
    for name in ("seen", "unseen"):
        prefix, secret, suffix = _canary_tokens(tok, trained[name])
        results[name] = canary_exposure(model, None, prefix, secret, digits, suffix=suffix)
    assert results["seen"].method == "enumeration" and results["seen"].rank == 1
    assert results["seen"].exposure == pytest.approx(math.log2(1000))
    assert results["unseen"].rank > 30 and results["unseen"].exposure < math.log2(1000) - 5
    # the same canaries as text: each candidate text tokenized whole gives the same ranking here
    canary = memsinks.probes.Canary.from_text(trained["seen"])
    text_result = canary_exposure(model, tok, canary.prefix, canary.secret, "0123456789", suffix=canary.suffix)
    assert text_result.rank == 1


def test_skew_normal_estimate_agrees_with_enumeration(trained):
    tok, model = trained["tok"], trained["model"]
    digits = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    prefix, secret, suffix = _canary_tokens(tok, trained["seen"])
    estimate = canary_exposure(model, None, prefix, secret, digits, suffix=suffix, max_enumerate=100, num_samples=400)
    assert estimate.method == "skew_normal" and estimate.rank is None
    assert estimate.exposure > 8.0  # the true canary lies far below every sampled candidate
    prefix, secret, suffix = _canary_tokens(tok, trained["unseen"])
    exact = canary_exposure(model, None, prefix, secret, digits, suffix=suffix)
    estimate = canary_exposure(model, None, prefix, secret, digits, suffix=suffix, max_enumerate=100, num_samples=400)
    assert abs(estimate.exposure - exact.exposure) < 1.0


def test_members_are_told_apart_and_carry_memorized_bits(trained):
    tok, model, corpus = trained["tok"], trained["model"], trained["corpus"]
    members = [_encode(tok, t) for t in corpus.train[:48]]
    nonmembers = [_encode(tok, t) for t in corpus.heldout]
    mia = membership_inference(model, members, nonmembers, tokenizer=tok)
    assert set(mia.auc) == {"loss", "zlib", "minkprob"}
    assert mia.auc["loss"] > 0.9 and mia.auc["minkprob"] > 0.8
    assert 0.0 <= mia.tpr_at_fpr_1pct["loss"] <= 1.0 and mia.to_dict()["n_nonmembers"] == 48
    bits_members = memorized_bits(model, members)
    bits_nonmembers = memorized_bits(model, nonmembers)
    assert bits_members.mean_bits > bits_nonmembers.mean_bits > 0
    # a model compared with itself holds no bits beyond its reference
    assert memorized_bits(model, members, reference_model=model).total_bits == pytest.approx(0.0, abs=1e-6)


def test_sink_gap_needs_sinks_and_ids(trained):
    members = [[1, 2, 3, 4]]
    with pytest.raises(ValueError, match="no sinks"):
        sink_gap(trained["model"], members, members, member_ids=[1], extraction=False)
    with_sinks = memsinks.add_sinks(trained["model"].__class__(trained["model"].config), memsinks.SinksConfig())
    with pytest.raises(ValueError, match="needs the members' sequence IDs"):
        sink_gap(with_sinks, members, members, member_ids=None, extraction=False)
    with pytest.raises(ValueError, match="shorter than 64"):
        sink_gap(with_sinks, members, members, member_ids=[5])
