"""The checks make_private runs before training (memsinks.privacy.validators)."""

import pytest
import torch
from torch import nn

from memsinks.privacy.grad_sample import PerUnitClipper
from memsinks.privacy.validators import check_model, check_per_unit_gradients


def test_batch_norm_is_refused_by_name():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match=r"^1 is a BatchNorm1d.*GroupNorm"):
        check_model(model)


class _SharedWeightLM(nn.Module):
    """A toy LM whose output layer reads the first block's weight directly (not through its forward)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 16)

    def forward(self, input_ids, **kwargs):
        h = torch.tanh(self.block(self.emb(input_ids)))
        h = h @ self.block.weight  # a second use the hooks never see
        return type("Out", (), {"logits": self.head(h)})()


def test_reference_check_names_a_parameter_used_outside_its_forward():
    model = _SharedWeightLM()
    clipper = PerUnitClipper(model, 1.0)
    with pytest.raises(ValueError, match=r"block\.weight.*freeze it"):
        check_per_unit_gradients(model, clipper, lambda batch: {"input_ids": batch["input_ids"]}, vocab_size=16)
    model.block.weight.requires_grad_(False)  # the offered fix
    check_per_unit_gradients(model, PerUnitClipper(model, 1.0), lambda b: {"input_ids": b["input_ids"]}, 16)
