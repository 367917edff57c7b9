"""make_private on the stock Trainer: models train, the update is DP-SGD's, bad input fails early."""

import numpy as np
import pytest
import torch
from torch import nn

import memsinks
from memsinks.privacy.sampling import PHYSICAL_BATCHES
from tests.conftest import tiny_model
from tests.privacy_helpers import brute_force_unit_grads, no_dropout, pattern_dataset, stock_trainer


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
        tiny_model("llama"), memsinks.SinksConfig(placement="append", n_sink_units=16)),
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
    out = model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0, **kwargs)
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
    trainer = memsinks.make_private(trainer, memsinks.PrivacyConfig(
        noise_multiplier=1.0, max_grad_norm=c, privacy_unit=unit, physical_batch_size=64, accountant="rdp"))
    trainer._memsinks_privacy.noise_multiplier = 0.0
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
        trainer = stock_trainer(model, data, out, optim="sgd", learning_rate=0.5, max_steps=2,
                                per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation)
        trainer = memsinks.make_private(trainer, memsinks.PrivacyConfig(
            noise_multiplier=1.0, max_grad_norm=0.1, physical_batch_size=physical, accountant="rdp"))
        trainer._memsinks_privacy.noise_multiplier = 0.0
        pieces = _first_logical_batch(trainer)[1]
        trainer.train()
        return model, pieces, trainer

    one, one_pieces, _ = run(tmp_path / "a", 16, 1, 64)
    many, many_pieces, trainer = run(tmp_path / "b", 4, 4, None)  # expected 16 units, passes of at most 4 rows
    assert one_pieces == 1 and many_pieces >= 4
    assert trainer.args.gradient_accumulation_steps == 1 and trainer.args.max_grad_norm == 0
    assert trainer._memsinks_privacy.sample_rate == 16 / 128
    for (name, a), b in zip(one.named_parameters(), many.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def test_user_level_delta_defaults_to_one_over_ids(tmp_path):
    trainer = stock_trainer(tiny_model("gpt2"), pattern_dataset(60, users=20), tmp_path)
    trainer = memsinks.make_private(trainer, memsinks.PrivacyConfig(
        noise_multiplier=1.0, privacy_unit="sequence_id", physical_batch_size=16))
    run = trainer._memsinks_privacy
    assert run.units.num_units == 20 and run.delta == 1 / 20 and run.sample_rate == 8 / 20


# ------------------------------------------------------------------------- bad input
def _tokens_only_collator(features):
    """A user's own collator that keeps tokens and labels and nothing else."""
    ids = torch.tensor([f["input_ids"] for f in features])
    return {"input_ids": ids, "labels": ids.clone()}


def test_collator_that_drops_the_id_column_is_refused(tmp_path):
    trainer = stock_trainer(tiny_model("gpt2"), pattern_dataset(64, users=32), tmp_path,
                            collator=_tokens_only_collator)
    with pytest.raises(ValueError, match="data collator dropped the 'sequence_ids' column"):
        memsinks.make_private(trainer, memsinks.PrivacyConfig(noise_multiplier=1.0, privacy_unit="sequence_id",
                                                              physical_batch_size=16))
    trainer = stock_trainer(tiny_model("gpt2"), pattern_dataset(64), tmp_path, collator=_tokens_only_collator)
    memsinks.make_private(trainer, memsinks.PrivacyConfig(noise_multiplier=1.0))  # fine per example


def test_collator_without_labels_is_refused(tmp_path):
    def no_labels(features):
        return {"input_ids": torch.tensor([f["input_ids"] for f in features])}

    trainer = stock_trainer(tiny_model("gpt2"), pattern_dataset(64), tmp_path, collator=no_labels)
    with pytest.raises(ValueError, match="returns no 'labels'"):
        memsinks.make_private(trainer, memsinks.PrivacyConfig(noise_multiplier=1.0))


@pytest.mark.parametrize("setting, message", [
    ({"fp16": True}, "fp16=True"),
    ({"per_device_train_batch_size": 64}, "not smaller than the 64 examples"),
    ({"label_smoothing_factor": 0.1}, "label_smoothing_factor"),
])
def test_trainer_settings_that_break_dp_are_refused(tmp_path, setting, message):
    try:
        trainer = stock_trainer(tiny_model("gpt2"), pattern_dataset(64), tmp_path, **setting)
    except ValueError as err:  # a TrainingArguments check on this machine (fp16 needs a GPU)
        pytest.skip(str(err))
    with pytest.raises(ValueError, match=message):
        memsinks.make_private(trainer, memsinks.PrivacyConfig(noise_multiplier=1.0))


def test_unit_larger_than_a_physical_batch_is_refused(tmp_path):
    trainer = stock_trainer(tiny_model("gpt2"), pattern_dataset(64, users=4), tmp_path, per_device_train_batch_size=2)
    with pytest.raises(ValueError, match=r"One privacy unit has 16 rows but physical_batch_size is 2"):
        memsinks.make_private(trainer, memsinks.PrivacyConfig(noise_multiplier=1.0, privacy_unit="sequence_id"))


def test_batch_norm_model_is_refused_before_training(tmp_path):
    model = tiny_model("gpt2")
    model.transformer.h[0].mlp.act = nn.BatchNorm1d(16)  # any BatchNorm anywhere
    trainer = stock_trainer(model, pattern_dataset(64), tmp_path)
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.mlp\.act is a BatchNorm1d"):
        memsinks.make_private(trainer, memsinks.PrivacyConfig(noise_multiplier=1.0))


def test_make_private_twice_and_wrong_types(tmp_path):
    trainer = stock_trainer(tiny_model("gpt2"), pattern_dataset(64), tmp_path)
    with pytest.raises(TypeError, match="PrivacyConfig"):
        memsinks.make_private(trainer, {"noise_multiplier": 1.0})
    trainer = memsinks.make_private(trainer, memsinks.PrivacyConfig(noise_multiplier=1.0))
    assert type(trainer).__name__ == "PrivateTrainer"
    with pytest.raises(ValueError, match="already private"):
        memsinks.make_private(trainer, memsinks.PrivacyConfig(noise_multiplier=1.0))
