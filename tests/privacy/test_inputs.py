"""A batch as the private step feeds it to the model (memsinks.privacy.inputs): one unit's clipped gradient never
depends on the other rows of its batch, whatever side the tokenizer pads on."""

from types import SimpleNamespace

import pytest
import torch

import memsinks
from memsinks.privacy.sampling import PHYSICAL_BATCHES
from tests.conftest import tiny_model
from tests.privacy.helpers import no_dropout, pattern_dataset, stock_trainer

C = 1.0


def _clipped_sum(trainer, rows: list[dict]) -> torch.Tensor:
    """S: the sum of the clipped per-unit gradients of one private step over ``rows`` (flattened, float64)."""
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    for p in params:
        p.summed_grad = None
    batch = trainer.data_collator(rows)
    trainer.training_step(trainer.model, {PHYSICAL_BATCHES: [batch], "num_units": len(rows)})
    out = torch.cat([p.summed_grad.reshape(-1).double() for p in params])
    for p in params:
        p.summed_grad = None
    return out


@pytest.mark.parametrize("family, attention", [("gpt2", "sdpa"), ("llama", "sdpa"), ("llama", "eager")])
@pytest.mark.parametrize("side", ["left", "right"])
def test_sensitivity_of_one_step_is_at_most_c_whatever_the_padding_side(tmp_path, family, attention, side):
    # eight short units and one long one, v: removing v changes the step's sum of clipped gradients by v's
    # clipped gradient alone (norm <= C) only if no other unit's gradient depends on how long v is
    tokenizer = SimpleNamespace(pad_token_id=None, eos_token_id=0, padding_side=side)  # pad = EOS, as for Llama
    collator = memsinks.SinksDataCollator(tokenizer, require_ids=False)
    model = no_dropout(tiny_model(family))
    model.set_attn_implementation(attention)
    trainer = stock_trainer(model, pattern_dataset(64), tmp_path, collator=collator, per_device_train_batch_size=4)
    trainer = memsinks.make_private(trainer, memsinks.PrivacyConfig(noise_multiplier=1.0, max_grad_norm=C,
                                                                   physical_batch_size=16, accountant="rdp"))
    rows = [{"input_ids": r[:6]} for r in pattern_dataset(8, seed=3)["input_ids"]]
    v = {"input_ids": pattern_dataset(1, length=40, seed=4)["input_ids"][0]}
    with_v = _clipped_sum(trainer, rows + [v])
    without_v = _clipped_sum(trainer, rows)
    alone = _clipped_sum(trainer, [v])
    assert alone.norm() == pytest.approx(C, rel=1e-4)  # v's gradient is clipped: the bound is tight
    assert (with_v - without_v).norm() <= C * (1 + 1e-4)
    torch.testing.assert_close(with_v - without_v, alone, rtol=1e-3, atol=1e-6)  # and it is v's own gradient
