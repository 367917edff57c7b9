"""Sequence IDs are checked, never cast: one at a time and as the forward's batch tensor."""

import pytest
import torch

import memsinks
from tests.conftest import tiny_model, token_batch


@pytest.mark.parametrize(
    "ids,err",
    [
        (torch.tensor([1.0, 2.0, 3.0]), TypeError),
        (torch.tensor([True, False, True]), TypeError),
        (torch.tensor([1, -2, 3]), ValueError),
        (torch.tensor([1, 2]), ValueError),
        (torch.ones(3, 5, dtype=torch.long), ValueError),
        ("abc", TypeError),
    ],
)
def test_bad_sequence_ids(ids, err):
    model = memsinks.add_sinks(tiny_model("gpt2")).train()
    x = token_batch()
    with pytest.raises(err):
        model(x, labels=x, sequence_ids=ids)
