"""The Trainer set-up shared by the demo, the benchmarks and the recipes."""

from __future__ import annotations

import pytest
import torch

import memsinks
from memsinks._memorization_corpus import Source, training_dataset
from memsinks._trainer_setup import experiment_arguments, sinks_trainer
from memsinks.corpus import train_tokenizer
from tests.conftest import tiny_model


def test_experiment_arguments_train_for_epochs_or_steps_and_take_overrides(tmp_path):
    args = experiment_arguments(str(tmp_path), batch_size=4, learning_rate=1e-3, seed=3, epochs=2)
    assert (args.num_train_epochs, args.max_steps, args.per_device_train_batch_size, args.seed) == (2, -1, 4, 3)
    assert args.lr_scheduler_type == "cosine" and args.weight_decay == 0.0 and args.report_to == []
    assert args.save_strategy == "no" and args.warmup_steps == 10
    args = experiment_arguments(str(tmp_path), batch_size=4, learning_rate=1e-3, seed=3, max_steps=5, data_seed=3,
                                logging_steps=1)
    assert (args.max_steps, args.data_seed, args.logging_steps) == (5, 3, 1)
    for length in ({}, {"epochs": 1, "max_steps": 5}):
        with pytest.raises(ValueError, match="either epochs or max_steps"):
            experiment_arguments(str(tmp_path), batch_size=4, learning_rate=1e-3, seed=0, **length)


def test_a_model_with_sinks_trains_only_on_rows_with_ids(tmp_path):
    tok = train_tokenizer(["the cat sat on the mat", "a dog ran to the park"], vocab_size=260)
    rows = [tok(t)["input_ids"] for t in ("the cat sat", "a dog ran", "on the mat", "to the park")]
    args = experiment_arguments(str(tmp_path), batch_size=2, learning_rate=1e-2, seed=0, max_steps=2)
    model = memsinks.add_sinks(tiny_model("gpt2", vocab=len(tok)), memsinks.SinksConfig(p_gen=0.5))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = []

    def wrap(collator):
        def collate(features):
            seen.append(len(features))
            return collator(features)
        return collate

    sinks_trainer(model, args, training_dataset([Source(rows)], seed=0), tok, wrap_collator=wrap).train()
    assert seen and all(n == 2 for n in seen)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    without_ids = training_dataset([Source(rows)], seed=0, with_ids=False)
    with pytest.raises(KeyError, match="sequence_ids"):
        sinks_trainer(model, args, without_ids, tok).train()
    plain = tiny_model("gpt2", vocab=len(tok))
    sinks_trainer(plain, args, without_ids, tok).train()  # no sinks: no IDs needed
