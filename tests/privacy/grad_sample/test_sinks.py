"""The sink wrappers' handlers (memsinks.privacy.grad_sample.sinks) against row-by-row autograd."""

import pytest
import torch
from torch import nn

import memsinks
from tests.conftest import tiny_model
from tests.privacy.helpers import ROWS, check_against_autograd, no_dropout


APPEND_DEFAULTS = {}  # mirror pairs, sink_lr_scale 32, centred masks
APPEND_PLAIN = {"sink_init": "zero", "sink_lr_scale": 1, "centered_masks": False}
APPEND_RANDOM = {"sink_init": "random", "sink_lr_scale": 8, "centered_masks": True}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("placement,extra", [("split", {}), ("split", {"sink_lr_scale": 4}), ("append", APPEND_DEFAULTS),
                                             ("append", APPEND_PLAIN), ("append", APPEND_RANDOM)],
                         ids=["split", "split_scaled", "append", "plain", "random"])
def test_sink_wrappers_get_exact_per_example_gradients(family, placement, extra):
    # the wrappers project with F.linear / addmm on the base weights, bypassing the base module's forward; the
    # pool is stored divided by sink_lr_scale, so a handler that forgot the scale would be off by that factor
    model = no_dropout(tiny_model(family))
    cfg = memsinks.SinksConfig(placement=placement, n_sink_units=16 if placement == "append" else None, p_gen=0.5,
                               **extra)
    memsinks.add_sinks(model, cfg)
    if placement == "append":  # zero-initialised pool weights would hide a missing gradient path
        for name, p in model.named_parameters():
            if "sink_weight" in name:
                nn.init.normal_(p, std=0.05)
    model.eval()
    ids = {"sequence_ids": torch.tensor([101, 202, 101, 303])}
    with memsinks.sinks_mode(model, "own"):
        clipper = check_against_autograd(model, torch.arange(ROWS), "auto", ids)
        check_against_autograd(model, torch.tensor([0, 1, 0, 2]), "ghost", ids)
    sink_params = [n for n in clipper.modes() if "sink_weight" in n or ".base." in n]
    assert sink_params


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("extra", [APPEND_DEFAULTS, APPEND_PLAIN], ids=["append", "plain"])
def test_with_the_appended_pools_dropped_the_handlers_get_exact_per_example_gradients_of_the_base(family, extra):
    # in drop mode the up projections leave the pool's units out: their outputs and the down projection's
    # inputs are the base units alone, and the pool's parameters take no part
    model = no_dropout(tiny_model(family))
    memsinks.add_sinks(model, memsinks.SinksConfig(placement="append", n_sink_units=16, p_gen=0.5, **extra))
    for name, p in model.named_parameters():
        if "sink_weight" in name:
            nn.init.normal_(p, std=0.05)
    model.eval()
    with memsinks.sinks_mode(model, "drop"):
        clipper = check_against_autograd(model, torch.arange(ROWS), "auto")
    assert any(".base." in n for n in clipper.modes())
