"""PerUnitClipper (memsinks.privacy.grad_sample.clipper) against row-by-row autograd on stock models."""

import pytest
import torch

from memsinks.privacy.grad_sample import PerUnitClipper
from memsinks.privacy.loss import causal_lm_row_losses
from tests.conftest import tiny_model
from tests.privacy.helpers import LENGTH, ROWS, check_against_autograd, clip_batch, no_dropout, run_clipper


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_per_example_clipping_matches_autograd(family, mode):
    model = no_dropout(tiny_model(family)).eval()
    clipper = check_against_autograd(model, torch.arange(ROWS), mode)
    modes = set(clipper.modes().values())
    assert modes == ({"hooks"} if mode == "hooks" else {"hooks", "ghost"})  # biases and norm scales stay materialised


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_user_level_units_pool_their_rows(mode):
    # rows 0 and 2 are one user, rows 1 and 3 another: a unit's gradient is the mean of its rows'
    model = no_dropout(tiny_model("gpt2")).eval()
    check_against_autograd(model, torch.tensor([0, 1, 0, 1]), mode)


def test_tied_embedding_gets_one_norm_for_both_uses():
    model = no_dropout(tiny_model("gpt2")).eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    clipper = check_against_autograd(model, torch.arange(ROWS), "ghost")
    assert clipper.modes()["transformer.wte.weight"] == "ghost"  # cross term of embedding and output layer


def test_masked_tokens_do_not_count():
    model = no_dropout(tiny_model("gpt2")).eval()
    x, _ = clip_batch()
    labels = x.clone()
    labels[1] = -100  # row 1 has no target at all
    labels[2, 5:] = -100
    losses = causal_lm_row_losses(model(x).logits, labels)
    logp = torch.log_softmax(model(x).logits.float(), -1)
    nll = -logp[2, :-1].gather(1, x[2, 1:, None]).squeeze(1)
    torch.testing.assert_close(losses[2], nll[:4].mean())  # targets at positions 1..4 only
    assert losses[1] == 0
    pos = {"position_ids": torch.arange(LENGTH).expand(ROWS, LENGTH)}
    _, norms = run_clipper(model, x, labels, torch.arange(ROWS), "ghost", 1.0, pos)
    assert norms[1] == 0 and torch.all(norms[[0, 2, 3]] > 0)


def test_broadcast_position_ids_are_refused_with_the_fix():
    model = no_dropout(tiny_model("gpt2")).eval()
    x, labels = clip_batch()
    clipper = PerUnitClipper(model, 1.0)
    with pytest.raises(RuntimeError, match=r"wpe.*position_ids of shape \(B, T\)"):
        with clipper.capture(torch.arange(ROWS), ROWS):
            model(x)  # GPT-2's default position_ids are (1, T)
    assert all(p.requires_grad for p in clipper.params)  # restored after the error


def test_hooks_are_inert_outside_capture_and_generate_works():
    model = tiny_model("gpt2").eval()
    x, _ = clip_batch()
    before = model(x).logits
    PerUnitClipper(model, 1.0)
    torch.testing.assert_close(model(x).logits, before)
    out = model.generate(x[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)
