"""Bad input to the probes and their readers: nothing is cast, nothing crashes inside the model, files are named."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import memsinks
from memsinks.probes import (
    ProbeSet, canary_exposure, extraction, likelihood, membership, membership_scores, sink_gap, token_nlls,
)
from memsinks.probes.inputs import read_records
from tests.bad_input.tool_files import CONTEXT, assert_clean, snapshot, tool, write_jsonl, write_lines


@pytest.fixture
def t(tmp_path):
    return tool(tmp_path)


@pytest.fixture
def model(t):
    return memsinks.from_pretrained(t.checkpoint)


@pytest.mark.parametrize("value, shown", [(3.7, "3.7"), ("12", "'12'"), (True, "True"), (-1, "-1"),
                                          (2.0 ** 63, "9.223372036854776e+18")])
def test_a_jsonl_sequence_id_is_never_cast(tmp_path, t, value, shown):
    path = write_jsonl(tmp_path / "m.jsonl", [{"text": "a b", "sequence_id": 4}, {"text": "c d", "sequence_id": value}])
    before = snapshot(path)
    with pytest.raises(ValueError) as err:
        ProbeSet.from_file(path, t.tokenizer)
    assert f"{path}:2: sequence_id" in str(err.value) and shown in str(err.value)
    assert_clean(tmp_path, before)


@pytest.mark.parametrize("tokens, shown", [([1, 2.5], "2.5"), ([1, "2"], "'2'"), ([False, 1], "False"),
                                           ([1, -3], "-3"), (7.0, "float")])
def test_token_ids_are_never_cast(t, tokens, shown):
    with pytest.raises(TypeError) as err:
        ProbeSet.from_data([[5, 6, 7], tokens], t.tokenizer, "members")
    assert "members[1]" in str(err.value) and shown in str(err.value)


def test_a_dataset_with_float_sequence_ids_is_refused(t):
    from datasets import Dataset

    ds = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5, 6]], "sequence_ids": [7.0, 8.5]})
    with pytest.raises(ValueError, match=r"members row 0: sequence_ids.*7\.0"):
        ProbeSet.from_data(ds, t.tokenizer, "members")


@pytest.mark.parametrize("ids", [[1.5, 2], ["1", 2], [np.float64(2036449459080209021.0), 2]])
def test_probe_functions_refuse_ids_that_are_not_ints(model, ids):
    seqs = [list(range(1, 20)), list(range(2, 21))]
    with pytest.raises(ValueError, match=r"member_ids\[0\]"):
        sink_gap(model, seqs, seqs, member_ids=ids, prefix_len=4, suffix_len=4)
    with pytest.raises(ValueError, match=r"sequence_ids\[0\]"):
        membership_scores(model, seqs, sequence_ids=ids)
    with pytest.raises(ValueError, match="sequence_id"):
        canary_exposure(model, None, [1, 2], [3], [3, 4, 5], sequence_id=ids[0])


def test_token_ids_outside_the_vocabulary_are_named_not_an_index_error(model):
    vocab = model.get_input_embeddings().num_embeddings
    with pytest.raises(ValueError, match=f"sequence 1: token ID {vocab} is outside the model's vocabulary"):
        token_nlls(model, [[1, 2, 3], [4, vocab, 5]])
    with pytest.raises(ValueError, match=f"sequence 0: token ID {vocab + 1}"):
        extraction(model, [[vocab + 1] * 10], prefix_len=4, suffix_len=4)


def test_long_sequences_are_scored_in_context_windows(model, monkeypatch, caplog):
    monkeypatch.setattr(likelihood, "_said_windowed", set())
    long = [int(x) for x in torch.randint(1, 200, (2 * CONTEXT + 5,), generator=torch.Generator().manual_seed(0))]
    with caplog.at_level(logging.WARNING, logger="memsinks"), memsinks.sinks_mode(model, "drop"):
        nll = token_nlls(model, [long, long[:10]])
        again = token_nlls(model, [long])
        windows = [long[0:CONTEXT], long[CONTEXT - 1:2 * CONTEXT - 1], long[2 * CONTEXT - 2:]]
        parts = token_nlls(model, windows)
    assert len(nll[0]) == len(long) - 1 and len(nll[1]) == 9
    np.testing.assert_allclose(nll[0], np.concatenate(parts), rtol=1e-6)  # each window scored with its own context
    np.testing.assert_allclose(again[0], nll[0])
    assert caplog.text.count("longer than the model's") == 1  # said once


def test_extraction_longer_than_the_context_is_a_clear_error(model):
    seqs = [list(range(1, CONTEXT + 10))]
    with pytest.raises(ValueError, match=f"needs {CONTEXT + 8} positions, but the model's context is {CONTEXT}"):
        extraction(model, seqs, prefix_len=CONTEXT, suffix_len=9)
    assert extraction(model, seqs, prefix_len=CONTEXT - 8, suffix_len=9).n_sequences == 1  # exactly fits


def test_zlib_needs_the_tokenizer_and_is_left_out_without_one(model, t, monkeypatch, caplog):
    monkeypatch.setattr(membership, "_said_no_zlib", False)
    seqs = [t.tokenizer(x)["input_ids"] for x in t.texts[:3]]
    with caplog.at_level(logging.WARNING, logger="memsinks"):
        without = membership_scores(model, seqs)
    with_tok = membership_scores(model, seqs, tokenizer=t.tokenizer)
    assert "zlib" not in without and "zlib" in with_tok and "no tokenizer was given" in caplog.text
    np.testing.assert_array_equal(without["loss"], with_tok["loss"])


def test_a_binary_file_is_named_as_binary(tmp_path):
    path = tmp_path / "members.txt"
    path.write_bytes(b"first line\n" + bytes([0, 159, 146, 150]) + b"\n")
    before = snapshot(path)
    with pytest.raises(ValueError, match=f"{path} is not a text file.*NUL byte on line 2"):
        read_records(path, "members")
    assert_clean(tmp_path, before)


def test_a_byte_order_mark_does_not_become_part_of_the_text(tmp_path, t):
    plain = write_lines(tmp_path / "plain.txt", [t.texts[0]])
    marked = tmp_path / "marked.txt"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert ProbeSet.from_file(marked, t.tokenizer).tokens == ProbeSet.from_file(plain, t.tokenizer).tokens


@pytest.mark.parametrize("line, says", [("[1, 2, 3]", "got list"), ("{\"text\": 5}", "'text' must be a string"),
                                        ("{\"ids\": [1]}", "needs a 'text'"), ("{not json", "not valid JSON")])
def test_malformed_jsonl_lines_are_named(tmp_path, t, line, says):
    path = tmp_path / "m.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(ValueError) as err:
        ProbeSet.from_file(path, t.tokenizer)
    assert f"{path}:2" in str(err.value) and says in str(err.value)


def test_a_text_that_tokenizes_to_nothing_is_named(tmp_path, t):
    class Empty:
        def __call__(self, text):
            return {"input_ids": []}

    path = write_lines(tmp_path / "m.txt", ["something"])
    with pytest.raises(ValueError, match=f"{path}:1: the text tokenizes to no tokens"):
        ProbeSet.from_file(path, Empty())
