"""The check of the sinks' effective learning rate: one warning at the first step of an Adam-type optimizer whose
learning rate times sink_lr_scale is above the limit, none below it, one global hook however many models, and no
check left waiting once judged or once its model is gone."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from datasets import Dataset
from torch.optim import optimizer as torch_optimizer
from transformers import Trainer, TrainingArguments

import memsinks
from memsinks import sink_learning_rate
from memsinks.sink_learning_rate import MAX_EFFECTIVE_SINK_LR, suggested_scale
from tests.conftest import tiny_model, token_batch


def _model(**config):
    cfg = memsinks.SinksConfig(placement="append", n_sink_units=16, sink_warmup_steps=0, **config)
    return memsinks.add_sinks(tiny_model("llama"), cfg).train()


def _steps(model, opt, n=2):
    for i in range(n):
        x = token_batch(shape=(2, 12), seed=i)
        model(x, labels=x, sequence_ids=torch.tensor([3, 4])).loss.backward()
        opt.step()
        opt.zero_grad()


def _hooks() -> int:
    return len(torch_optimizer._global_optimizer_pre_hooks)


def _waiting(*models) -> list[bool]:
    """Whether each model's check still waits for an optimizer step."""
    gc.collect()
    return [m.forward.lr_check in sink_learning_rate._pending for m in models]


def test_a_rate_above_the_limit_is_named_once_with_a_scale_that_fits(caplog):
    model, other = _model(), _model()  # append default: sink_lr_scale 32
    with caplog.at_level("WARNING", logger="memsinks"):
        _steps(other, torch.optim.AdamW(other.parameters(), lr=3e-4), n=1)  # two models' checks side by side
        before = _hooks()
        _steps(model, torch.optim.AdamW(model.parameters(), lr=3e-3), n=3)
    warnings = [r.getMessage() for r in caplog.records if "sink_lr_scale" in r.getMessage()]
    assert len(warnings) == 1
    assert "0.003 x SinksConfig.sink_lr_scale 32 = 0.096" in warnings[0]
    assert "SinksConfig(sink_lr_scale=4)" in warnings[0]
    assert _hooks() == before and _waiting(model, other) == [False, False]


@pytest.mark.parametrize("lr,scale", [(3e-4, 32.0), (3e-3, 4.0), (1e-2, 1.0)])
def test_rates_at_or_below_the_limit_or_without_a_scale_pass_quietly(caplog, lr, scale):
    model = _model(sink_lr_scale=scale)
    with caplog.at_level("WARNING", logger="memsinks"):
        _steps(model, torch.optim.Adam(model.parameters(), lr=lr))
    assert "sink_lr_scale" not in caplog.text
    assert _waiting(model) == [False]


def test_a_scheduler_that_starts_at_zero_is_judged_by_its_peak(caplog):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: step / 10)  # lr 0 at the first step
    assert opt.param_groups[0]["lr"] == 0.0
    with caplog.at_level("WARNING", logger="memsinks"):
        _steps(model, opt, n=1)
        sched.step()
    assert "0.01 x SinksConfig.sink_lr_scale 32 = 0.32" in caplog.text


def test_sgd_and_other_models_optimizers_are_not_judged(caplog):
    model, other = _model(), _model()
    with caplog.at_level("WARNING", logger="memsinks"):
        x = token_batch(shape=(2, 12))
        model(x, labels=x, sequence_ids=torch.tensor([3, 4])).loss.backward()
        plain = torch.nn.Linear(2, 2)
        torch.optim.AdamW(plain.parameters(), lr=1.0).step()  # holds none of the model's sinks: the check waits
        assert _waiting(model) == [True]
        _steps(other, torch.optim.SGD(other.parameters(), lr=1.0))  # under SGD the scale acts squared: not judged
        assert _waiting(model, other) == [True, False]
    assert "sink_lr_scale" not in caplog.text
    check = weakref.ref(model.forward.lr_check)
    del model
    gc.collect()
    assert check() is None  # the model is gone: so is its check, and the list holds it only weakly


def test_the_stock_trainer_gets_the_warning(tmp_path, caplog):
    model = _model()
    x = token_batch(shape=(4, 12))
    ds = memsinks.assign_sequence_ids(Dataset.from_dict({"input_ids": x.tolist()}))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, learning_rate=3e-3,
                             report_to=[], save_strategy="no", use_cpu=True)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=memsinks.SinksDataCollator())
    with caplog.at_level("WARNING", logger="memsinks"):
        trainer.train()
    assert "= 0.096, above 0.015" in caplog.text


def test_the_suggested_scale_is_the_largest_power_of_two_within_the_limit():
    for lr in (3e-4, 3e-3, 1e-3, 2.5e-3, 5e-2):
        s = suggested_scale(lr)
        assert lr * s <= MAX_EFFECTIVE_SINK_LR < lr * 2 * s
        memsinks.SinksConfig(placement="append", n_sink_units=4, sink_lr_scale=s)  # a valid setting


def test_wrapped_optimizers_are_judged_by_the_one_that_updates_the_weights(caplog):
    class DPOptimizer:  # the shape of Opacus' and accelerate's wrappers: the real optimizer kept as an attribute
        def __init__(self, inner):
            self.original_optimizer = inner
            self.param_groups = inner.param_groups

    model = _model()
    check = model.forward.lr_check
    with caplog.at_level("WARNING", logger="memsinks"):
        check.judge(DPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0)))
        assert check.done and "sink_lr_scale" not in caplog.text
        check.done = False
        check.judge(DPOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3)))
    assert "0.001 x SinksConfig.sink_lr_scale 32 = 0.032" in caplog.text
