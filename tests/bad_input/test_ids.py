"""Bad sequence IDs and token IDs: never cast, each refused with the offending element named.

Covers the model's forward, SinksDataCollator, assign_sequence_ids (both paths) and content_id.
"""

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict

import memsinks
from tests.conftest import tiny_model, token_batch


@pytest.fixture(scope="module")
def model():
    return memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(p_gen=0.5)).train()


@pytest.mark.parametrize("ids,error,fragment", [
    ([1, 2**63, 3], ValueError, "sequence_ids[1] = 9223372036854775808 is outside"),
    ([1, 1.5, 3], TypeError, "sequence_ids[1] = 1.5 is a float"),
    ([1, 2, 3.0], TypeError, "sequence_ids[2] = 3.0 is a float"),
    ([1, "x", 3], TypeError, "sequence_ids[1] = 'x' is a str"),
    ([True, 2, 3], TypeError, "sequence_ids[0] = True is a bool"),
    ([1, None, 3], TypeError, "sequence_ids[1] = None is missing"),
    ("abc", TypeError, "sequence_ids = 'abc' is a str"),
    ([1, -2, 3], ValueError, "sequence_ids[1] = -2 is negative"),
    ([[1] * 12, [2] * 11 + [2.5], [3] * 12], TypeError, "sequence_ids[1][11] = 2.5 is a float"),
    (np.array([1.0, 2.0, 3.0]), TypeError, "numpy array of dtype float64"),
    (np.array([1, 2, 2**63], dtype=np.uint64), ValueError, "sequence_ids[2] = 9223372036854775808"),
    (torch.tensor([2036449459080209021.0, 2.0, 3.0], dtype=torch.float64), TypeError, "dtype torch.float64"),
    (torch.tensor([1, 2, 3], dtype=torch.uint64), TypeError, "dtype torch.uint64"),
])
def test_the_forward_refuses_ids_a_cast_would_change(model, ids, error, fragment):
    x = token_batch()
    with pytest.raises(error) as info:
        model(x, labels=x, sequence_ids=ids)
    assert fragment in str(info.value)


def test_the_forward_accepts_lossless_integer_ids():
    model = memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(p_gen=0.5)).eval()
    x = token_batch()
    with memsinks.sinks_mode(model, "own"):
        reference = model(x, sequence_ids=torch.tensor([1, 2, 3])).logits
        assert not torch.equal(model(x, sequence_ids=torch.tensor([1, 2, 4])).logits, reference)
        for ids in ([1, 2, 3], np.array([1, 2, 3], dtype=np.int32), torch.tensor([1, 2, 3], dtype=torch.int16),
                    [np.int64(1), 2, 3]):
            assert torch.equal(model(x, sequence_ids=ids).logits, reference)


@pytest.mark.parametrize("features,error,fragment", [
    ([{"input_ids": [1, 2], "sequence_ids": 1.5}], TypeError, "feature 0: sequence_ids"),
    ([{"input_ids": [1, 2], "sequence_ids": 7}, {"input_ids": [3], "sequence_ids": "7"}], TypeError, "feature 1: sequence_ids"),
    ([{"input_ids": [1, 2], "sequence_ids": 2**63}], ValueError, "9223372036854775808"),
    ([{"input_ids": [1, 2], "sequence_ids": np.float64(4.0)}], TypeError, "4.0"),
    ([{"input_ids": [1, 2], "sequence_ids": [1, 1]}, {"input_ids": [1, 2, 3], "sequence_ids": [2, 2, 3.5]}],
     TypeError, "feature 1: sequence_ids[2] = 3.5 is a float"),
    ([{"input_ids": [1, 2], "sequence_ids": [1, -1]}], ValueError, "feature 0: sequence_ids[1] = -1 is negative"),
    ([{"input_ids": [1, 2.0], "sequence_ids": 1}], TypeError, "feature 0: input_ids[1] = 2.0 is a float"),
    ([{"input_ids": [1, 2], "labels": [1, "2"], "sequence_ids": 1}], TypeError, "feature 0: labels[1] = '2' is a str"),
    ([{"input_ids": [1, 2], "attention_mask": [1.0, 1.0], "sequence_ids": 1}], TypeError, "feature 0: attention_mask"),
])
def test_the_collator_refuses_values_a_cast_would_change(features, error, fragment):
    with pytest.raises(error) as info:
        memsinks.SinksDataCollator()(features)
    assert fragment in str(info.value)


@pytest.mark.parametrize("columns,kwargs,error,fragment", [
    ({"input_ids": [[1, 2], [3, 4.5]]}, {}, TypeError, "Column 'input_ids' holds float64"),
    ({"input_ids": [[True, False]]}, {}, TypeError, "Column 'input_ids' holds bool"),
    ({"input_ids": [["1", "2"]]}, {}, TypeError, "Row 0, column 'input_ids': content_id: token_ids[0] = '1' is a str"),
    ({"input_ids": [[1], [2]], "doc": [1.0, 2.0]}, {"from_column": "doc"}, TypeError, "Column 'doc' holds float64"),
    ({"input_ids": [[1], [2]], "doc": ["a", None]}, {"from_column": "doc"}, TypeError, "Row 1, column 'doc'"),
    ({"input_ids": []}, {}, ValueError, "The dataset is empty (0 rows)"),
])
def test_assign_sequence_ids_refuses_what_it_would_have_to_cast(columns, kwargs, error, fragment):
    with pytest.raises(error) as info:
        memsinks.assign_sequence_ids(Dataset.from_dict(columns), **kwargs)
    assert fragment in str(info.value)


def test_assign_sequence_ids_names_an_empty_split():
    dd = DatasetDict({"train": Dataset.from_dict({"input_ids": [[1, 2]]}), "test": Dataset.from_dict({"input_ids": []})})
    with pytest.raises(ValueError, match=r"split\(s\) \['test'\] are empty"):
        memsinks.assign_sequence_ids(dd)


@pytest.mark.parametrize("tokens,fragment", [([1.0, 2.0], "token_ids[0] = 1.0 is a float"),
                                             (np.array([1.5, 2.0]), "dtype float64"),
                                             (torch.tensor([1.0, 2.0]), "dtype torch.float32"),
                                             ([1, 2**64], "token_ids[1] = 18446744073709551616 is outside")])
def test_content_id_refuses_tokens_a_cast_would_change(tokens, fragment):
    with pytest.raises((TypeError, ValueError)) as info:
        memsinks.content_id(tokens)
    assert fragment in str(info.value)
    assert memsinks.content_id([1, 2]) == memsinks.content_id(np.array([1, 2], dtype=np.int32))
