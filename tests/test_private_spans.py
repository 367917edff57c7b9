"""``mark_private_spans``: which tokens the default patterns, user patterns and user spans mark."""

from __future__ import annotations

import pytest
from datasets import Dataset

import memsinks
from memsinks.corpus import train_tokenizer
from memsinks.private_spans import find_private_spans, private_mask_for

TEXTS = [
    "Patient Anna Keller, born 03/12/1961, paid 120 USD. Reporter phone: 6175550134. Outcome recovered.",
    "Ticket 4411 from Ben Novak: the router fails. Contact email: ben.novak77@example.org thanks.",
    "Wire 2500 USD on May 3 to account number 4402 8817 9931, reference invoice 17.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS * 20, vocab_size=300)


def _marked(tokenizer, text, **kw):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    mask = private_mask_for(tokenizer, ids, **kw)
    return "".join(tokenizer.decode([i]) for i, m in zip(ids, mask) if m)


def test_the_digits_of_a_planted_phone_number_are_marked_and_nothing_else(tokenizer):
    assert _marked(tokenizer, TEXTS[0]) == "6175550134"


def test_an_email_and_a_grouped_account_number_are_marked_dates_and_amounts_are_not(tokenizer):
    assert _marked(tokenizer, TEXTS[1]).strip() == "ben.novak77@example.org"
    assert _marked(tokenizer, TEXTS[2]).replace(" ", "") == "440288179931"


def test_an_iso_date_is_not_a_number_to_hide_but_a_longer_dashed_id_is():
    assert find_private_spans("seen on 2024-05-01, again 2024-05-02.") == []
    text = "claim 2024-05-01-7788 and card 4402-8817-9931"
    assert [text[a:b] for a, b in find_private_spans(text)] == ["2024-05-01-7788", "4402-8817-9931"]


def test_user_patterns_and_user_spans_replace_the_defaults(tokenizer):
    assert _marked(tokenizer, TEXTS[0], patterns={"name": r"Anna Keller"}).strip() == "Anna Keller"
    start = TEXTS[2].index("invoice")
    assert _marked(tokenizer, TEXTS[2], spans=[(start, start + 7)]).strip() == "invoice"


def test_the_column_is_added_to_every_row_and_the_collator_carries_it(tokenizer):
    ds = Dataset.from_dict({"input_ids": [tokenizer(t)["input_ids"] for t in TEXTS]})
    ds = memsinks.mark_private_spans(ds, tokenizer)
    assert [len(m) for m in ds["private_mask"]] == [len(r) for r in ds["input_ids"]]
    features = [{**row, "sequence_ids": i + 1} for i, row in enumerate(ds)]
    batch = memsinks.SinksDataCollator(tokenizer)(features)
    assert batch["private_mask"].shape == batch["input_ids"].shape
    assert batch["private_mask"].sum() == sum(sum(m) for m in ds["private_mask"])


def test_spans_from_a_column_and_the_errors_that_name_the_problem(tokenizer):
    text = TEXTS[1]
    ds = Dataset.from_dict({"input_ids": [tokenizer(text)["input_ids"]], "pii": [[[0, 6]]]})
    marked = memsinks.mark_private_spans(ds, tokenizer, spans_column="pii")
    ids, mask = marked[0]["input_ids"], marked[0]["private_mask"]
    assert "".join(tokenizer.decode([i]) for i, m in zip(ids, mask) if m) == "Ticket"
    with pytest.raises(ValueError, match="not both"):
        memsinks.mark_private_spans(ds, tokenizer, patterns=[r"\d+"], spans_column="pii")
    with pytest.raises(KeyError, match="no spans column 'spans'"):
        memsinks.mark_private_spans(ds, tokenizer, spans_column="spans")
    with pytest.raises(ValueError, match="already has a 'private_mask' column"):
        memsinks.mark_private_spans(marked, tokenizer)
    with pytest.raises(ValueError, match=r"pattern 'bad' \('\[0-9'\) is not a valid regular expression"):
        memsinks.mark_private_spans(ds, tokenizer, patterns={"bad": "[0-9"})
    bad_span = Dataset.from_dict({"input_ids": [tokenizer(text)["input_ids"]], "pii": [[[0, 9999]]]})
    with pytest.raises(ValueError, match=r"private span \[0, 9999\] lies outside"):
        memsinks.mark_private_spans(bad_span, tokenizer, spans_column="pii")


def test_find_private_spans_leaves_dates_and_short_numbers_and_finds_phone_numbers():
    assert find_private_spans("born 03/12/1961, paid 120 USD on 12-05") == []
    assert find_private_spans("call 617-555-0134 now") == [(5, 17)]


@pytest.mark.parametrize("value,error,match", [
    ([1, 0, 1.0], ValueError, "only 0 and 1; it holds 1.0"),
    ([1, 0], ValueError, "as long as its input_ids"),
    ([1, 2, 0], ValueError, "it holds 2"),
])
def test_the_collator_refuses_a_mask_that_is_not_one_bit_per_token(value, error, match):
    with pytest.raises(error, match=match):
        memsinks.SinksDataCollator()([{"input_ids": [5, 6, 7], "sequence_ids": 1, "private_mask": value}])


def test_the_collator_refuses_a_batch_where_only_some_rows_are_marked():
    features = [{"input_ids": [5, 6], "sequence_ids": 1, "private_mask": [0, 1]}, {"input_ids": [5], "sequence_ids": 2}]
    with pytest.raises(KeyError, match="Feature 1 of the batch has no 'private_mask'"):
        memsinks.SinksDataCollator()(features)
