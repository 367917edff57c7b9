"""Sinks under the stock transformers Trainer: IDs survive the column filter, loss falls, resume is exact."""

import json

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

import memsinks
from memsinks.model import get_router
from tests.conftest import tiny_model


def _dataset(n=64, length=24, vocab=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a learnable stream: each sequence counts upward from a random start, plus some repeats
    rows = []
    for _ in range(n):
        start = int(torch.randint(1, vocab - length - 1, (1,), generator=g))
        rows.append(list(range(start, start + length)))
    rows += rows[:8] * 4
    return memsinks.assign_sequence_ids(Dataset.from_dict({"input_ids": rows}))


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, learning_rate=3e-3, max_steps=40,
                logging_steps=5, save_strategy="no", report_to=[], seed=0, disable_tqdm=True, use_cpu=True,
                lr_scheduler_type="constant", warmup_steps=0, dataloader_num_workers=0)
    base.update(kw)
    return TrainingArguments(**base)


@pytest.mark.parametrize("family,placement", [("gpt2", "split"), ("llama", "append")])
def test_stock_trainer_trains_with_sinks_and_loss_falls(tmp_path, family, placement):
    """The Trainer's plumbing, on tiny models trained from scratch at a high learning rate: the append levers
    (a sinks-first warm-up, a 32x learning rate) are for fine-tuning and have their own tests."""
    model = tiny_model(family)
    levers = dict(sink_lr_scale=1.0, sink_warmup_steps=0) if placement == "append" else {}
    cfg = memsinks.SinksConfig(placement=placement, n_sink_units=32 if placement == "append" else None, **levers)
    memsinks.add_sinks(model, cfg)
    trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset(),
                      data_collator=memsinks.SinksDataCollator())
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < 0.7 * losses[0]
    router = get_router(model)
    # 64 + 8 distinct IDs... of which the 8 repeats share IDs with rows 0..7: masks built once per ID
    assert router.masks_computed <= 64
    assert router.cache_hits > router.masks_computed


def test_trainer_keeps_sequence_ids_column_with_default_remove_unused_columns(tmp_path):
    model = memsinks.add_sinks(tiny_model("gpt2"))
    ds = _dataset().add_column("junk", ["x"] * 96)
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=ds,
                      data_collator=memsinks.SinksDataCollator())
    assert trainer.args.remove_unused_columns
    batch = next(iter(trainer.get_train_dataloader()))
    assert "sequence_ids" in batch and "junk" not in batch


def test_checkpoint_resume_reproduces_the_uninterrupted_run(tmp_path):
    def run(out, max_steps, resume=None):
        model = memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(p_gen=0.5, routing_seed=5))
        args = _args(out, max_steps=max_steps, save_strategy="steps", save_steps=10)
        trainer = Trainer(model=model, args=args, train_dataset=_dataset(),
                          data_collator=memsinks.SinksDataCollator())
        trainer.train(resume_from_checkpoint=resume)
        return model

    full = run(tmp_path / "full", 20)
    ckpt = tmp_path / "full" / "checkpoint-10"
    saved = json.loads((ckpt / "sinks_config.json").read_text())
    assert saved["routing_seed"] == 5 and saved["p_gen"] == 0.5
    resumed = run(tmp_path / "resumed", 20, resume=str(ckpt))
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    ids = torch.tensor([1, 99, 12345])
    assert torch.equal(get_router(full).compute_pool_bits(ids), get_router(resumed).compute_pool_bits(ids))
    # the checkpoint also loads on its own with identical routing
    loaded = memsinks.from_pretrained(tmp_path / "full" / "checkpoint-20")
    x = torch.randint(1, 128, (2, 10))
    with memsinks.sinks_mode(loaded, "own"), memsinks.sinks_mode(full.eval(), "own"):
        assert torch.allclose(loaded(x, sequence_ids=ids[:2]).logits, full(x, sequence_ids=ids[:2]).logits, atol=1e-6)


def test_trainer_evaluation_uses_the_config_eval_mode(tmp_path):
    model = memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(p_gen=0.5, eval_mode="drop"))
    ds = _dataset()
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=10), train_dataset=ds, eval_dataset=ds.select(range(16)),
                      data_collator=memsinks.SinksDataCollator())
    trainer.train()
    drop_loss = trainer.evaluate()["eval_loss"]
    with memsinks.sinks_mode(model, "own"):
        own_loss = trainer.evaluate()["eval_loss"]
    assert drop_loss != pytest.approx(own_loss)
