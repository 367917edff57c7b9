"""Handler lookup (memsinks.privacy.grad_sample.registry): by type along the MRO, then by predicate, then fallback."""

import torch
from torch import nn

import memsinks
from memsinks.layers import SinkDownProjection
from memsinks.privacy.grad_sample import PerUnitClipper, handler_for
from memsinks.privacy.grad_sample.linear import LinearHandler
from memsinks.privacy.grad_sample.norm import HFRMSNormHandler
from memsinks.privacy.grad_sample.sinks import SinkDownAppendHandler
from tests.conftest import tiny_model
from tests.privacy.helpers import ROWS, check_against_autograd, no_dropout


class _ScaledLinear(nn.Linear):
    """A subclass of a registered type, with no registration of its own."""


def test_subclasses_of_a_registered_type_get_its_handler():
    assert isinstance(handler_for(_ScaledLinear(4, 4)), LinearHandler)
    llama = tiny_model("llama")
    assert isinstance(handler_for(llama.model.norm), HFRMSNormHandler)  # by predicate: not an nn.RMSNorm
    assert handler_for(nn.ReLU()) is None


def test_a_sink_down_projection_subclass_is_served_by_placement():
    model = no_dropout(tiny_model("llama"))
    memsinks.add_sinks(model, memsinks.SinksConfig(placement="append", n_sink_units=8, memorized_threshold=0))
    down = model.model.layers[0].mlp.down_proj

    class AppendDown(type(down)):
        """What a subclass per placement would look like."""

    down.__class__ = AppendDown
    assert isinstance(down, SinkDownProjection) and isinstance(handler_for(down), SinkDownAppendHandler)
    down.placement = "split"
    assert handler_for(down) is None  # the split wrapper calls its base layer, which has its own handler
    down.placement = "append"
    for name, p in model.named_parameters():
        if "sink_weight" in name:
            nn.init.normal_(p, std=0.05)
    model.eval()
    with memsinks.sinks_mode(model, "own"):
        clipper = check_against_autograd(model, torch.arange(ROWS), "auto",
                                         {"sequence_ids": torch.tensor([5, 6, 5, 7])})
    assert any(o.name == "model.layers.0.mlp.down_proj" and isinstance(o.handler, SinkDownAppendHandler)
               for o in clipper.owners)
    assert not any(o.name.endswith("down_proj.base") for o in clipper.owners)  # covered by the wrapper's handler
    assert isinstance(clipper, PerUnitClipper)
