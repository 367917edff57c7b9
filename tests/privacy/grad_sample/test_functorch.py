"""The torch.func fallback (memsinks.privacy.grad_sample.functorch) for a layer without a handler."""

import torch
from torch import nn

from memsinks.privacy.grad_sample.functorch import FunctorchHandler
from tests.conftest import tiny_model
from tests.privacy.helpers import check_against_autograd, no_dropout


class _GatedTanh(nn.Module):
    """A layer memsinks has no handler for: per-example gradients come from the functorch fallback."""

    def __init__(self, width):
        super().__init__()
        self.gate = nn.Parameter(torch.linspace(0.5, 1.5, width))

    def forward(self, x):
        return torch.tanh(x) * self.gate


def test_unknown_layers_use_the_functorch_fallback():
    model = no_dropout(tiny_model("llama"))
    model.model.norm = _GatedTanh(model.config.hidden_size)
    model.eval()
    clipper = check_against_autograd(model, torch.tensor([0, 1, 1, 2]), "auto")
    handlers = {owner.name: type(owner.handler) for owner in clipper.owners}
    assert handlers["model.norm"] is FunctorchHandler
