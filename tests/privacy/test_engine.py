"""make_private (memsinks.privacy.engine): defaults it derives, and bad input refused before any training step."""

import logging

import pytest
import torch
from torch import nn

import memsinks
from tests.conftest import tiny_model
from tests.privacy.helpers import pattern_dataset, stock_trainer


def test_user_level_delta_defaults_to_a_hundredth_of_one_over_ids(tmp_path):
    trainer = stock_trainer(tiny_model("gpt2"), pattern_dataset(60, users=20), tmp_path)
    trainer = memsinks.make_private(trainer, memsinks.PrivacyConfig(
        noise_multiplier=1.0, privacy_unit="sequence_id", physical_batch_size=16))
    run = trainer.privacy
    assert run.units.num_units == 20 and run.delta == 1 / (100 * 20) and run.sample_rate == 8 / 20


def test_a_delta_of_one_over_n_or_more_is_refused_unless_insisted_on(tmp_path, caplog):
    data = pattern_dataset(60, users=20)
    config = dict(noise_multiplier=1.0, privacy_unit="sequence_id", physical_batch_size=16, delta=1 / 20)
    with pytest.raises(ValueError, match=r"delta=0.05 is not below 1 / \(number of units\) = 1/20.*allow_large_delta"):
        memsinks.make_private(stock_trainer(tiny_model("gpt2"), data, tmp_path), memsinks.PrivacyConfig(**config))
    with caplog.at_level(logging.WARNING, logger="memsinks"):
        trainer = memsinks.make_private(stock_trainer(tiny_model("gpt2"), data, tmp_path),
                                        memsinks.PrivacyConfig(**config, allow_large_delta=True))
    assert trainer.privacy.delta == 1 / 20 and "publishes one unit's data" in caplog.text


def test_sequence_id_zero_is_refused_per_user(tmp_path):
    data = pattern_dataset(64, users=32)
    ids = list(data["sequence_ids"])
    ids[5] = 0
    data = data.remove_columns("sequence_ids").add_column("sequence_ids", ids)
    with pytest.raises(ValueError, match=r"Row 5 has sequence ID 0.*assign_sequence_ids"):
        memsinks.make_private(stock_trainer(tiny_model("gpt2"), data, tmp_path), memsinks.PrivacyConfig(
            noise_multiplier=1.0, privacy_unit="sequence_id", physical_batch_size=16))


def test_lora_on_the_input_embedding_is_refused_with_the_fix(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"]))
    with pytest.raises(ValueError, match=r"embed_tokens.*LoRA adapter on an embedding.*modules_to_save"):
        memsinks.make_private(stock_trainer(model, pattern_dataset(64), tmp_path),
                              memsinks.PrivacyConfig(noise_multiplier=1.0))


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


def test_a_private_mask_column_is_refused_naming_it(tmp_path):
    """Marked spans train the sinks through a second backward pass that per-example clipping never sees."""
    data = pattern_dataset(64)
    data = data.add_column("private_mask", [[0] * (len(r) - 2) + [1, 1] for r in data["input_ids"]])
    model = memsinks.add_sinks(tiny_model("llama"), memsinks.SinksConfig(placement="append", n_sink_units=16,
                                                                          memorized_threshold=0))
    with pytest.raises(ValueError, match=r"'private_mask' column.*remove_columns\('private_mask'\)"):
        memsinks.make_private(stock_trainer(model, data, tmp_path), memsinks.PrivacyConfig(noise_multiplier=1.0))


@pytest.mark.parametrize("routing", [{"memorized_threshold": 1.0}, {}], ids=["explicit", "append-default"])
def test_sinks_that_route_memorized_tokens_are_refused_before_training(tmp_path, routing):
    """The routing's first pass trains the sinks through a backward pass that per-example clipping never sees."""
    model = memsinks.add_sinks(tiny_model("llama"), memsinks.SinksConfig(placement="append", n_sink_units=16,
                                                                         **routing))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"memorized_threshold=1.0.*memorized_threshold=0 to train with DP-SGD"):
        memsinks.make_private(stock_trainer(model, pattern_dataset(64), tmp_path),
                              memsinks.PrivacyConfig(noise_multiplier=1.0))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_the_sinks_warm_up_holds_under_dp(tmp_path):
    """During the warm-up only the sinks move, though DP-SGD's gradients bypass autograd's parameter hooks."""
    model = memsinks.add_sinks(tiny_model("llama"), memsinks.SinksConfig(placement="append", n_sink_units=16,
                                                                         sink_warmup_steps=2, memorized_threshold=0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = memsinks.make_private(stock_trainer(model, pattern_dataset(64), tmp_path, max_steps=2),
                                    memsinks.PrivacyConfig(noise_multiplier=1.0, physical_batch_size=64))
    trainer.train()  # one physical batch per step: the warm-up counts forward passes
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all("sink_weight" in n for n in moved)
    assert {n for n in before if "sink_weight" in n} <= moved
