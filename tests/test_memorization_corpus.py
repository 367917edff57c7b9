"""The memorization corpus: which rows land in which set, how often the stream holds each, and their IDs."""

from __future__ import annotations

from collections import Counter

import pytest

import memsinks
from memsinks._memorization_corpus import (
    CorpusConfig, Source, build, join_documents, stream_rows, training_dataset,
)
from memsinks.corpus import make_demo_corpus, train_tokenizer

SMALL = dict(n_train=30, n_repeated=4, n_heldout=6, n_canaries=2, vocab_size=300, seed=1)


@pytest.fixture(scope="module")
def stories():
    return build(CorpusConfig(**SMALL))


def _text(seed: int = 5) -> str:
    return join_documents(make_demo_corpus(n_train=80, n_repeated=0, n_heldout=0, n_canaries=0, seed=seed).train)


def test_stories_are_framed_with_eos_and_the_sets_are_disjoint(stories):
    eos = stories.tokenizer.eos_token_id
    sets = {"train": stories.train, "repeated": stories.repeated, "heldout": stories.heldout,
            "canaries": stories.canaries}
    assert {k: len(v) for k, v in sets.items()} == {"train": 30, "repeated": 4, "heldout": 6, "canaries": 2}
    for rows in sets.values():
        assert all(r[0] == eos and r[-1] == eos and eos not in r[1:-1] for r in rows)
    seen = [tuple(r) for rows in sets.values() for r in rows]
    assert len(set(seen)) == len(seen)
    assert [stories.tokenizer.decode(r[1:-1]) for r in stories.canaries] == stories.canary_texts
    assert all("my account number is" in t for t in stories.canary_texts)


def test_the_stock_stream_repeats_targets_and_canaries_and_never_holds_heldout_rows(stories):
    ds = training_dataset(stories.sources(repeats=5), seed=0)
    counts = Counter(tuple(r) for r in ds["input_ids"])
    assert all(counts[tuple(r)] == 1 for r in stories.train)
    assert all(counts[tuple(r)] == 5 for r in stories.repeated + stories.canaries)
    assert not any(tuple(r) in counts for r in stories.heldout)
    assert len(ds) == 30 + (4 + 2) * 5
    assert ds["sequence_ids"] == [memsinks.content_id(r) for r in ds["input_ids"]]
    again = training_dataset(stories.sources(repeats=5), seed=0)
    other = training_dataset(stories.sources(repeats=5), seed=1)
    assert again["input_ids"] == ds["input_ids"] and other["input_ids"] != ds["input_ids"]
    assert "sequence_ids" not in training_dataset(stories.sources(5), seed=0, with_ids=False).column_names


def test_stream_order_is_source_after_source_each_repeated_in_place():
    a, b, c = [1, 2], [3], [4, 5]
    assert stream_rows([Source([a]), Source([b, c], repeats=2)]) == [a, b, c, b, c]
    assert stream_rows([Source([a]), Source([b], repeats=2), Source([c], repeats=2)]) == [a, b, b, c, c]


def test_text_windows_keep_their_length_and_canaries_follow_their_own_seed():
    text = _text()
    cfg = CorpusConfig(window=16, n_train=None, n_repeated=5, n_heldout=7, n_canaries=3, vocab_size=300, seed=2)
    corpus = build(cfg, text=text)
    assert all(len(w) == 16 for w in corpus.train + corpus.repeated + corpus.heldout)
    assert (len(corpus.repeated), len(corpus.heldout), len(corpus.canaries)) == (5, 7, 3)
    n_windows = len(corpus.train) + 12
    assert n_windows == len(corpus.tokenizer(text)["input_ids"]) // 16  # n_train None: every window
    capped = build(CorpusConfig(**{**cfg.__dict__, "n_train": 10}), text=text, tokenizer=corpus.tokenizer)
    assert len(capped.train) == 10 and capped.tokenizer is corpus.tokenizer
    reseeded = build(cfg, text=text, tokenizer=corpus.tokenizer, canary_seed=99)
    assert reseeded.repeated == corpus.repeated and reseeded.heldout == corpus.heldout
    assert reseeded.canary_texts != corpus.canary_texts


def test_stories_take_neither_a_tokenizer_nor_a_canary_seed():
    tok = train_tokenizer(["a b c"], vocab_size=260)
    with pytest.raises(ValueError, match="needs a text"):
        build(CorpusConfig(**SMALL), tokenizer=tok)
    with pytest.raises(ValueError, match="needs a text"):
        build(CorpusConfig(**SMALL), canary_seed=3)


def test_sources_with_their_own_ids_keep_them_through_the_shuffle():
    rows = [[1, 2], [3, 4], [5, 6]]
    ds = training_dataset([Source(rows[:2], ids=[7, 8]), Source(rows[2:], repeats=3, ids=[9])], seed=0)
    pairs = Counter(zip(map(tuple, ds["input_ids"]), ds["sequence_ids"]))
    assert pairs == {((1, 2), 7): 1, ((3, 4), 8): 1, ((5, 6), 9): 3}
    with pytest.raises(ValueError, match="give every source its IDs"):
        training_dataset([Source(rows[:2], ids=[7, 8]), Source(rows[2:])], seed=0)
    with pytest.raises(ValueError, match="one ID per row"):
        Source(rows, ids=[1])
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        Source(rows, repeats=0)


def test_join_documents_stops_at_max_chars():
    docs = ["aaaa", "bbbb", "cc"]
    assert join_documents(docs) == "aaaa\n\nbbbb\n\ncc"
    assert join_documents(docs, max_chars=9) == "aaaa\n\nbbb"
    assert join_documents(docs, max_chars=3) == "aaa"
