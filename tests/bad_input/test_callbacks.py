"""Bad input to the memorization callbacks: refused at construction or before the first step, never mid-training."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import Trainer, TrainingArguments

import memsinks
from memsinks.callbacks import CanaryCallback, MemorizationAlert, ProbeCallback, SinkGapCallback
from memsinks.probes import likelihood
from tests.bad_input.tool_files import CONTEXT, tool


@pytest.fixture
def t(tmp_path):
    return tool(tmp_path)


def _trainer(t, tmp_path, callbacks, max_steps=2):
    from datasets import Dataset

    rows = [t.tokenizer(x)["input_ids"] for x in t.texts]
    train = memsinks.assign_sequence_ids(Dataset.from_dict({"input_ids": rows}))
    model = memsinks.from_pretrained(t.checkpoint).train()
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=max_steps, per_device_train_batch_size=4,
                             learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True,
                             use_cpu=True, dataloader_num_workers=0, seed=0)
    return Trainer(model=model, args=args, train_dataset=train, data_collator=memsinks.SinksDataCollator(t.tokenizer),
                   callbacks=callbacks)


def _probe(t, members=None, **kwargs):
    members = members if members is not None else t.texts[:3]
    return ProbeCallback(t.tokenizer, members, t.texts[3:6], every_n_steps=1, prefix_len=8, suffix_len=8, **kwargs)


@pytest.mark.parametrize("name, hint", [("memorization/extraction_exct", "memorization/extraction_exact"),
                                        ("memorization/mia_auc_los", "memorization/mia_auc_loss"),
                                        ("memorization/sinkgap_closed", "memorization/sink_gap_closed")])
def test_a_misspelt_metric_is_an_error_with_a_suggestion(name, hint):
    with pytest.raises(ValueError) as err:
        MemorizationAlert(above={name: 0.1})
    assert repr(name) in str(err.value) and f"Did you mean {hint!r}" in str(err.value)


def test_a_metric_without_its_prefix_is_an_error_and_trainer_metrics_are_left_alone():
    with pytest.raises(ValueError, match="'extraction_exact' as 'memorization/extraction_exact'"):
        MemorizationAlert(below={"extraction_exact": 0.5})
    MemorizationAlert(above={"eval_loss": 9.0, "memorization/canary_exposure_max": 5.0})


@pytest.mark.parametrize("probes, watched", [(("extraction",), "memorization/mia_auc_loss"),
                                             (("extraction", "membership"), "memorization/mia_auc_reference"),
                                             (("membership",), "memorization/extraction_exact")])
def test_a_metric_no_attached_callback_logs_is_an_error_before_the_first_step(t, tmp_path, probes, watched):
    alert = MemorizationAlert(above={watched: 0.5})
    trainer = _trainer(t, tmp_path, [_probe(t, probes=probes), alert])
    with pytest.raises(ValueError) as err:
        trainer.train()
    assert repr(watched) in str(err.value) and "ProbeCallback" in str(err.value)
    assert trainer.state.global_step == 0


def test_zlib_is_not_logged_without_a_tokenizer_so_an_alert_on_it_is_refused(t, tmp_path):
    members = [t.tokenizer(x)["input_ids"] for x in t.texts[:3]]
    probe = ProbeCallback(None, members, [t.tokenizer(x)["input_ids"] for x in t.texts[3:6]], every_n_steps=1,
                          prefix_len=8, suffix_len=8, probes=("membership",))
    alert = MemorizationAlert(above={"memorization/mia_auc_zlib": 0.9})
    with pytest.raises(ValueError, match="mia_auc_zlib"):
        _trainer(t, tmp_path, [probe, alert]).train()
    assert "memorization/mia_auc_zlib" not in probe.metric_names()


def test_an_alert_on_a_logged_metric_trains(t, tmp_path):
    alert = MemorizationAlert(above={"memorization/extraction_exact": 2.0, "memorization/sink_gap_closed": 9.0})
    trainer = _trainer(t, tmp_path, [_probe(t), alert])
    trainer.train()
    assert any("memorization/extraction_exact" in e for e in trainer.state.log_history)


def test_members_longer_than_the_context_are_probed_mid_training(t, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(likelihood, "_said_windowed", set())
    canary = [t.long_text, t.long_text + " and more"]
    assert min(len(t.tokenizer(x)["input_ids"]) for x in canary) > CONTEXT
    trainer = _trainer(t, tmp_path, [_probe(t, members=canary, probes=("extraction", "membership", "sink_gap",
                                                                          "memorized_bits"))])
    with caplog.at_level(logging.WARNING, logger="memsinks"):
        trainer.train()
    logged = [e for e in trainer.state.log_history if "memorization/memorized_bits" in e]
    assert len(logged) >= 2 and all(e["memorization/memorized_bits"] > 0 for e in logged)
    assert caplog.text.count(f"longer than the model's {CONTEXT}-token context") == 1


def test_token_ids_outside_the_vocabulary_are_refused_before_the_first_step(t, tmp_path):
    vocab = len(t.tokenizer)
    members = [list(range(1, 20)), list(range(1, 19)) + [vocab + 3]]
    trainer = _trainer(t, tmp_path, [ProbeCallback(None, members, probes=("extraction",), prefix_len=8,
                                                   suffix_len=8, max_examples=None)])
    with pytest.raises(ValueError, match=rf"members\[1\]: token ID {vocab + 3} is outside"):
        trainer.train()
    assert trainer.state.global_step == 0


@pytest.mark.parametrize("kind", [ProbeCallback, SinkGapCallback])
def test_an_extraction_longer_than_the_context_is_refused_before_the_first_step(t, tmp_path, kind):
    callback = kind(t.tokenizer, [t.long_text] * 3, t.texts[3:6], prefix_len=CONTEXT, suffix_len=8)
    trainer = _trainer(t, tmp_path, [callback])
    with pytest.raises(ValueError, match=f"the model's context is {CONTEXT} tokens"):
        trainer.train()
    assert trainer.state.global_step == 0


@pytest.mark.parametrize("ids, shown", [([1.5, 2.0, 3.0], "1.5"), (["7", 8, 9], "'7'"), ([True, 1, 2], "True")])
def test_sink_gap_member_ids_are_never_cast(t, ids, shown):
    with pytest.raises(ValueError) as err:
        SinkGapCallback(t.tokenizer, t.texts[:3], t.texts[3:6], member_ids=ids, prefix_len=8, suffix_len=8)
    assert "member_ids[0]" in str(err.value) and shown in str(err.value)


def test_a_canary_the_tokenizer_cannot_fit_in_the_vocabulary_is_refused_at_train_begin(t, tmp_path):
    class Wider:
        """A tokenizer of another, larger vocabulary."""
        pad_token_id = 0

        def __call__(self, text):
            return {"input_ids": [len(t.tokenizer) + 10] * 4}

    trainer = _trainer(t, tmp_path, [CanaryCallback(Wider(), ["the secret is 123"], every_n_steps=1)])
    with pytest.raises(ValueError, match=f"canary 0: token ID {len(t.tokenizer) + 10}"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_probe_callback_members_with_float_token_ids_are_refused(t):
    members = [list(range(1, 21)), [1, 2, 3.0] + list(range(4, 21))]
    with pytest.raises(TypeError, match=r"members\[1\].*item 2 is 3\.0"):
        ProbeCallback(t.tokenizer, members, t.texts[3:6], probes=("extraction",), prefix_len=8, suffix_len=8)
    with pytest.raises(TypeError, match=r"members\[0\].*item 0 is 1\.0"):
        ProbeCallback(t.tokenizer, [torch.tensor([1.0, 2.0] * 10)], probes=("extraction",), prefix_len=8,
                      suffix_len=8)
