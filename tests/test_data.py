"""Sequence-ID assignment and the data collator."""

import pytest
import torch
from datasets import Dataset, DatasetDict

import memsinks
from tests.conftest import run_python


def test_content_ids_group_exact_duplicates_only():
    ds = Dataset.from_dict({"input_ids": [[1, 2, 3], [1, 2, 3], [1, 2, 4], [3, 2, 1]]})
    ids = memsinks.assign_sequence_ids(ds)["sequence_ids"]
    assert ids[0] == ids[1] and len({ids[0], ids[2], ids[3]}) == 3
    assert all(0 < i < 2**63 for i in ids)
    assert ids[0] == memsinks.content_id([1, 2, 3]) == memsinks.content_id(torch.tensor([1, 2, 3]))


def test_ids_from_a_column_group_documents():
    ds = Dataset.from_dict({"input_ids": [[1], [2], [3]], "doc": ["a", "b", "a"]})
    ids = memsinks.assign_sequence_ids(ds, from_column="doc")["sequence_ids"]
    assert ids[0] == ids[2] != ids[1]
    assert ids[0] == memsinks.key_id("a")
    assert memsinks.key_id(7) != memsinks.key_id("7")


def test_assign_on_datasetdict_and_errors():
    dd = DatasetDict({"train": Dataset.from_dict({"input_ids": [[1, 2]]}), "test": Dataset.from_dict({"input_ids": [[3]]})})
    out = memsinks.assign_sequence_ids(dd)
    assert "sequence_ids" in out["train"].column_names and "sequence_ids" in out["test"].column_names
    with pytest.raises(KeyError, match="no ID column 'author'"):
        memsinks.assign_sequence_ids(dd["train"], from_column="author")
    with pytest.raises(ValueError, match="already has"):
        memsinks.assign_sequence_ids(out["train"])
    with pytest.raises(TypeError):
        memsinks.key_id(1.5)


def test_ids_are_stable_across_hash_seeds():
    code = "import memsinks; print(memsinks.content_id([5, 6, 7]), memsinks.key_id('doc-1'))"
    assert run_python(code, env={"PYTHONHASHSEED": "3"}) == run_python(code, env={"PYTHONHASHSEED": "4"})


class _Tok:
    pad_token_id = 0
    eos_token_id = 0
    padding_side = "right"


def test_collator_pads_masks_labels_and_carries_ids():
    collate = memsinks.SinksDataCollator(_Tok())
    batch = collate([{"input_ids": [5, 0, 7], "sequence_ids": 11}, {"input_ids": [8], "sequence_ids": 12}])
    assert batch["input_ids"].tolist() == [[5, 0, 7], [8, 0, 0]]
    # the real token 0 (EOS = pad) in row 0 keeps its label; padding does not
    assert batch["labels"].tolist() == [[5, 0, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["sequence_ids"].dtype == torch.long and batch["sequence_ids"].tolist() == [11, 12]


def test_collator_per_token_ids_and_left_padding():
    tok = _Tok()
    tok.padding_side = "left"
    collate = memsinks.SinksDataCollator(tok)
    batch = collate([{"input_ids": [5, 6], "sequence_ids": [1, 2]}, {"input_ids": [7], "sequence_ids": [3]}])
    assert batch["input_ids"].tolist() == [[5, 6], [0, 7]]
    assert batch["sequence_ids"].tolist() == [[1, 2], [0, 3]]


def test_collator_errors():
    collate = memsinks.SinksDataCollator(_Tok())
    with pytest.raises(KeyError, match="assign_sequence_ids"):
        collate([{"input_ids": [1]}])
    with pytest.raises(KeyError, match="Feature 1"):
        collate([{"input_ids": [1], "sequence_ids": 3}, {"input_ids": [1]}])
    with pytest.raises(ValueError, match="per-token"):
        collate([{"input_ids": [1, 2], "sequence_ids": [3]}])
    assert "sequence_ids" not in memsinks.SinksDataCollator(_Tok(), require_ids=False)([{"input_ids": [1]}])
