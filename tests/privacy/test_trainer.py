"""PrivateTrainer (memsinks.privacy.trainer): models train, the update is DP-SGD's, user subclasses keep their
behaviour, a second train() continues."""

import logging

import numpy as np
import pytest
import torch

from transformers import Trainer

import memsinks
from memsinks.privacy.sampling import PHYSICAL_BATCHES
from tests.conftest import tiny_model
from tests.privacy.helpers import brute_force_unit_grads, no_dropout, pattern_dataset, stock_trainer


def _lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "lm_head"]))


MODELS = {
    "gpt2": lambda: tiny_model("gpt2"),
    "llama": lambda: tiny_model("llama"),
    "gpt_neox": lambda: tiny_model("gpt_neox"),
    "llama+lora": lambda: _lora(tiny_model("llama")),
    "gpt2+sinks(split)": lambda: memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(p_gen=0.5)),
    "llama+sinks(append)": lambda: memsinks.add_sinks(
        tiny_model("llama"), memsinks.SinksConfig(placement="append", n_sink_units=16, sink_lr_scale=1.0,
                                                  sink_warmup_steps=0, memorized_threshold=0)),  # 1e-2 x 32: fast
}


@pytest.mark.parametrize("name", list(MODELS))
def test_stock_trainer_with_dp_trains_and_loss_falls(tmp_path, name):
    model = MODELS[name]()
    lr = 2e-2 if "lora" in name else 1e-2
    trainer = stock_trainer(model, pattern_dataset(512), tmp_path, per_device_train_batch_size=64, max_steps=16,
                            learning_rate=lr)
    trainer = memsinks.make_private(trainer, memsinks.PrivacyConfig(noise_multiplier=0.7, accountant="rdp",
                                                                   physical_batch_size=128))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    losses = [h["loss"] for h in logs]
    assert len(losses) == 16 and all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.1, losses
    eps = [h["privacy/epsilon"] for h in logs]
    assert all(b > a for a, b in zip(eps, eps[1:]))
    model.eval()  # generate() still works on the trained model (the probes use it)
    prompt = torch.tensor([[5, 8, 11, 14]])
    kwargs = {"sequence_ids": torch.tensor([7])} if memsinks.has_sinks(model) else {}
    # DP noise is drawn from os.urandom, so the model may emit EOS early: ask for exactly 4 new tokens
    out = model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0, **kwargs)
    assert out.shape == (1, 8)


def _first_logical_batch(trainer):
    loader = trainer.get_train_dataloader()
    loader.set_epoch(0)
    pieces = next(iter(loader))[PHYSICAL_BATCHES]
    return {k: torch.cat([p[k] for p in pieces]) for k in pieces[0]}, len(pieces)


@pytest.mark.parametrize("unit", ["example", "sequence_id"])
def test_noise_free_update_is_the_mean_of_clipped_unit_gradients(tmp_path, unit):
    users = 16 if unit == "sequence_id" else None  # 4 rows per user
    data = pattern_dataset(64, users=users)
    model = no_dropout(tiny_model("gpt2"))
    trainer = stock_trainer(model, data, tmp_path, optim="sgd", learning_rate=1.0, max_steps=1,
                            per_device_train_batch_size=4)
    c = 0.05
    trainer = memsinks.make_private(trainer, memsinks.PrivacyConfig(  # reproducible: the batch drawn below is trained
        noise_multiplier=1.0, max_grad_norm=c, privacy_unit=unit, physical_batch_size=64, accountant="rdp",
        reproducible=True))
    trainer.privacy.noise_multiplier = 0.0
    batch, _ = _first_logical_batch(trainer)
    if unit == "sequence_id":
        units = torch.unique(batch["sequence_ids"], return_inverse=True)[1]
    else:
        units = torch.arange(batch["input_ids"].shape[0])
    reference = no_dropout(tiny_model("gpt2"))  # same seed: the same initial weights
    per_unit = brute_force_unit_grads(reference, batch["input_ids"], batch["labels"], units)
    norms = torch.sqrt(sum(g.reshape(g.shape[0], -1).pow(2).sum(1) for g in per_unit.values()))
    assert (norms > c).any()
    factors = (c / (norms + 1e-6)).clamp(max=1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    ref_params = dict(reference.named_parameters())
    expected_batch = 4  # units per step, whatever the draw's size: Opacus divides by the expected size
    for name, p in model.named_parameters():
        want = torch.tensordot(factors, per_unit[ref_params[name]], dims=1) / expected_batch
        torch.testing.assert_close(before[name] - p.detach(), want, rtol=1e-4, atol=1e-7)
    assert trainer.state.log_history[0]["privacy/epsilon"] == float("inf")  # honest: no noise, no privacy


def test_virtual_steps_and_gradient_accumulation_are_not_counted_twice(tmp_path):
    data = pattern_dataset(128)

    def run(out, per_device, accumulation, physical):
        model = no_dropout(tiny_model("llama"))
        trainer = stock_trainer(model, data, out, optim="sgd", learning_rate=0.5, max_steps=2, seed=1,  # 21 units first
                                per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation)
        trainer = memsinks.make_private(trainer, memsinks.PrivacyConfig(  # reproducible: both runs draw alike
            noise_multiplier=1.0, max_grad_norm=0.1, physical_batch_size=physical, accountant="rdp", reproducible=True))
        trainer.privacy.noise_multiplier = 0.0
        pieces = _first_logical_batch(trainer)[1]
        trainer.train()
        return model, pieces, trainer

    one, one_pieces, _ = run(tmp_path / "a", 16, 1, 64)
    many, many_pieces, trainer = run(tmp_path / "b", 4, 4, None)  # expected 16 units, passes of at most 4 rows
    assert one_pieces == 1 and many_pieces >= 4
    assert trainer.args.gradient_accumulation_steps == 1 and trainer.args.max_grad_norm == 0
    assert trainer.privacy.sample_rate == 16 / 128
    for (name, a), b in zip(one.named_parameters(), many.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


class _CountingTrainer(Trainer):
    """A user's Trainer subclass with an override of its own."""

    def log(self, logs, *args, **kwargs):
        logs["user/seen"] = 1.0
        super().log(logs, *args, **kwargs)


def test_make_private_returns_a_published_class_and_disarms_the_trainer_it_was_given(tmp_path):
    from memsinks.privacy import PrivateTrainer, PrivateTrainerMixin, private_trainer_class

    stock = stock_trainer(tiny_model("gpt2"), pattern_dataset(64), tmp_path / "stock", max_steps=1)
    private = memsinks.make_private(stock, memsinks.PrivacyConfig(noise_multiplier=1.0, accountant="rdp"))
    assert type(private) is PrivateTrainer and type(stock) is Trainer and private.model is stock.model
    with pytest.raises(RuntimeError, match="train that one"):
        stock.train()  # a script that ignored the return value must not train without privacy

    user = _CountingTrainer(model=tiny_model("gpt2"), args=stock.args, train_dataset=pattern_dataset(64),
                            data_collator=stock.data_collator)
    user.args.output_dir = str(tmp_path / "user")
    private = memsinks.make_private(user, memsinks.PrivacyConfig(noise_multiplier=1.0, accountant="rdp"))
    assert type(private) is private_trainer_class(_CountingTrainer)
    assert isinstance(private, _CountingTrainer) and isinstance(private, PrivateTrainerMixin)
    private.train()
    entry = next(h for h in private.state.log_history if "loss" in h)
    assert entry["user/seen"] == 1.0 and "privacy/epsilon" in entry  # both overrides of log() ran


def test_private_trainer_built_directly(tmp_path):
    from transformers import TrainingArguments

    from memsinks.privacy import PrivateTrainer

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2, report_to=[],
                             use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True)
    trainer = PrivateTrainer(model=tiny_model("gpt2"), args=args, train_dataset=pattern_dataset(64),
                             data_collator=memsinks.SinksDataCollator(require_ids=True),
                             privacy_config=memsinks.PrivacyConfig(noise_multiplier=1.0, accountant="rdp"))
    trainer.train()
    assert trainer.privacy.ledger.steps == 2 and (tmp_path / "privacy_ledger.json").is_file()


def test_a_second_train_call_continues_the_same_ledger(tmp_path):
    from opacus.accountants import RDPAccountant

    from memsinks.privacy.optimizer import PrivateOptimizer
    from tests.privacy.helpers import opacus_epsilon

    trainer = stock_trainer(tiny_model("gpt2"), pattern_dataset(64), tmp_path, max_steps=2)
    trainer = memsinks.make_private(trainer, memsinks.PrivacyConfig(noise_multiplier=1.0, accountant="rdp"))
    trainer.train()
    trainer.train()
    assert trainer.privacy.ledger.steps == 4 and trainer.state.global_step == 2
    eps = [h["privacy/epsilon"] for h in trainer.state.log_history if "loss" in h]
    assert eps[-1] == pytest.approx(opacus_epsilon(RDPAccountant, 4, 1.0, 8 / 64, trainer.privacy.delta), rel=1e-12)
    wrappers, optimizer = 0, trainer.optimizer
    while hasattr(optimizer, "optimizer") or hasattr(optimizer, "original_optimizer"):
        wrappers += isinstance(optimizer, PrivateOptimizer)
        optimizer = getattr(optimizer, "original_optimizer", None) or optimizer.optimizer
    assert wrappers == 1  # the noise is added once per step, not once per train() call


def test_dp_with_sinks_does_not_warn_that_the_sinks_are_frozen(tmp_path, caplog):
    model = memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(p_gen=0.5))
    trainer = memsinks.make_private(stock_trainer(model, pattern_dataset(64), tmp_path, max_steps=1),
                                    memsinks.PrivacyConfig(noise_multiplier=1.0, accountant="rdp"))
    with caplog.at_level(logging.WARNING, logger="memsinks"):
        trainer.train()
    assert "frozen" not in caplog.text
