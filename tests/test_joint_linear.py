"""joint_linear: the parts' matmuls written side by side equal the concatenation of F.linear, values and gradients."""

import pytest
import torch
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from memsinks.joint_linear import joint_linear
from memsinks.projection import linear_weight


def _parts(generator, sizes, bias):
    return [(torch.randn(n, 24, generator=generator, requires_grad=True),
             torch.randn(n, generator=generator, requires_grad=True) if b else None) for n, b in zip(sizes, bias)]


@pytest.mark.parametrize("bias", [(True, False, False), (False, True, True), (True, True, True)])
def test_values_are_bit_identical_and_gradients_equal_to_concatenated_linears(bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 24, generator=g, requires_grad=True)
    parts = _parts(g, (40, 6, 6), bias)
    out = joint_linear(x, parts)
    ref = torch.cat([F.linear(x, w, b) for w, b in parts], dim=-1)
    assert out.shape == (3, 7, 52)
    assert torch.equal(out, ref)

    upstream = torch.randn(out.shape, generator=g)
    leaves = [x] + [t for p in parts for t in p if t is not None]
    got = torch.autograd.grad(out, leaves, upstream)
    want = torch.autograd.grad(ref, leaves, upstream)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_equal_parts_give_bit_identical_columns():
    """Mirrored sink pairs rely on two halves with equal rows producing equal outputs."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 11, 24, generator=g)
    w = torch.randn(8, 24, generator=g)
    out = joint_linear(x, [(torch.randn(30, 24, generator=g), None), (w, None), (w.clone(), None)])
    assert torch.equal(out[..., 30:38], out[..., 38:])


def test_conv1d_weights_and_frozen_parts():
    """A GPT-2 Conv1D's (in, out) weight through its (out, in) view; a frozen part gets no gradient."""
    g = torch.Generator().manual_seed(2)
    conv = Conv1D(16, 24)
    conv.weight.requires_grad_(False)
    conv.bias.requires_grad_(False)
    sink = torch.randn(4, 24, generator=g, requires_grad=True)
    x = torch.randn(2, 5, 24, generator=g, requires_grad=True)
    out = joint_linear(x, [(linear_weight(conv), conv.bias), (sink, None)])
    assert torch.equal(out[..., :16], conv(x))
    out.sum().backward()
    assert conv.weight.grad is None and conv.bias.grad is None
    torch.testing.assert_close(sink.grad, x.detach().reshape(-1, 24).sum(0).expand(4, 24))
    assert x.grad is not None


def test_autocast_casts_like_f_linear():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 24, generator=g)
    parts = _parts(g, (12, 4), (True, False))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = joint_linear(x, parts)
        ref = torch.cat([F.linear(x, w, b) for w, b in parts], dim=-1)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(out, ref)
