"""Blocks below the lowest sink block: outputs recorded once, replayed detached, own forwards restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memsinks.shared_prefix import recording, replaying


def test_replayed_blocks_return_the_recorded_outputs_detached_and_compute_nothing():
    blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
    x = torch.randn(3, 4)
    with recording(blocks) as outputs:
        want = blocks[1](blocks[0](x))
    assert want.requires_grad and not outputs[1].requires_grad
    assert torch.equal(outputs[1], want.detach())
    with torch.no_grad():
        blocks[0].weight.zero_()  # were the blocks computed, the output would change
    with replaying(blocks, outputs):
        got = blocks[1](blocks[0](torch.zeros(3, 4)))
    assert torch.equal(got, want.detach()) and not got.requires_grad
    assert not blocks[0]._forward_hooks  # the recording hooks are gone
    assert not torch.equal(blocks[1](blocks[0](x)), want)  # and each block computes again


def test_a_block_with_its_own_instance_forward_gets_it_back_and_a_block_not_recorded_is_refused():
    blocks = nn.ModuleList([nn.Identity(), nn.Identity()])
    own = blocks[0].forward  # a wrapper set on the instance (as accelerate's offload hooks do)
    blocks[0].forward = own
    with replaying(blocks, [torch.ones(1), (torch.zeros(1),)]):
        assert torch.equal(blocks[0](torch.zeros(1)), torch.ones(1))
        assert isinstance(blocks[1](torch.ones(1)), tuple)
    assert blocks[0].__dict__["forward"] is own and "forward" not in blocks[1].__dict__
    with pytest.raises(ValueError, match=r"Blocks \[1\] have no recorded output"):
        with replaying(blocks, [torch.ones(1), None]):
            pass
