"""Shared pieces of the privacy tests: brute-force per-unit gradients, learnable data, stock and private Trainers."""

from __future__ import annotations

import torch
from torch import nn

import memsinks
from memsinks.privacy.grad_sample import PerUnitClipper
from memsinks.privacy.loss import causal_lm_row_losses
from tests.conftest import tiny_model

ROWS, LENGTH = 4, 10


def no_dropout(model: nn.Module) -> nn.Module:
    """Zero every dropout so that two computations of the same batch agree exactly."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    for attr in ("attn_pdrop", "resid_pdrop", "embd_pdrop", "attention_dropout", "hidden_dropout"):
        if hasattr(model.config, attr):
            setattr(model.config, attr, 0.0)
    return model


def brute_force_unit_grads(model, input_ids, labels, units, forward_kwargs=None):
    """Per-unit gradients by autograd, one row at a time: {param: (U, *shape)}.

    A unit's loss is the mean of its rows' own mean next-token losses (what the private
    step clips).
    """
    forward_kwargs = forward_kwargs or {}
    params = [p for p in model.parameters() if p.requires_grad]
    count = int(units.max()) + 1
    sizes = torch.bincount(units, minlength=count).float()
    out = {p: torch.zeros(count, *p.shape) for p in params}
    for r in range(input_ids.shape[0]):
        model.zero_grad(set_to_none=True)
        kwargs = {k: v[r:r + 1] for k, v in forward_kwargs.items()}
        loss = causal_lm_row_losses(model(input_ids[r:r + 1], **kwargs).logits, labels[r:r + 1]).sum()
        if loss.requires_grad:
            loss.backward()
        for p in params:
            if p.grad is not None:
                out[p][units[r]] += p.grad / sizes[units[r]]
    model.zero_grad(set_to_none=True)
    return out


def unit_norms(per_unit: dict) -> torch.Tensor:
    return torch.sqrt(sum(g.reshape(g.shape[0], -1).double().pow(2).sum(1) for g in per_unit.values()))


def pattern_rows(n: int, length: int = 16, vocab: int = 128, seed: int = 0) -> list[list[int]]:
    """Arithmetic progressions mod the vocabulary: a little model learns them fast."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        start = int(torch.randint(1, vocab, (1,), generator=g))
        step = int(torch.randint(1, 4, (1,), generator=g))
        rows.append([(start + step * k) % (vocab - 1) + 1 for k in range(length)])
    return rows


def pattern_dataset(n: int, users: int | None = None, length: int = 16, seed: int = 0):
    """A datasets.Dataset of learnable rows with ``sequence_ids`` (one per row, or shared by ``users`` groups)."""
    from datasets import Dataset

    rows = pattern_rows(n, length, seed=seed)
    owner = [i % users if users else i for i in range(n)]
    ds = Dataset.from_dict({"input_ids": rows, "owner": owner})
    return memsinks.assign_sequence_ids(ds, from_column="owner").remove_columns("owner")


def stock_trainer(model, dataset, output_dir, collator=None, **overrides):
    """A stock transformers.Trainer on CPU with small, quiet defaults."""
    from transformers import Trainer, TrainingArguments

    settings = dict(output_dir=str(output_dir), per_device_train_batch_size=8, max_steps=4, learning_rate=5e-3,
                    logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
                    dataloader_num_workers=0, lr_scheduler_type="constant", weight_decay=0.0)
    settings.update(overrides)
    collator = collator or memsinks.SinksDataCollator(require_ids=True)
    return Trainer(model=model, args=TrainingArguments(**settings), train_dataset=dataset, data_collator=collator)


# ------------------------------------------------------------------ the clipper against autograd
def clip_batch(seed=1):
    """A (ROWS, LENGTH) batch with pad tokens (0) inside rows and masked targets."""
    x = torch.randint(1, 128, (ROWS, LENGTH), generator=torch.Generator().manual_seed(seed))
    x[1, 2] = x[3, 7] = 0  # the pad token: Llama's embedding gives its row no gradient
    labels = x.clone()
    labels[0, 3:6] = -100
    return x, labels


def clip_by_hand(per_unit, norms, c):
    factors = (c / (norms + 1e-6)).clamp(max=1.0)
    return {p: torch.tensordot(factors.to(g.dtype), g, dims=1) for p, g in per_unit.items()}, factors


def run_clipper(model, x, labels, units, mode, c, kwargs):
    """One capture + clip_and_accumulate over the batch; returns the (closed) clipper and the unit norms."""
    count = int(units.max()) + 1
    sizes = torch.bincount(units, minlength=count).float()
    clipper = PerUnitClipper(model, max_grad_norm=c, clipping=mode)
    for p in clipper.params:
        p.summed_grad = None
    with clipper.capture(units, count):
        loss = (causal_lm_row_losses(model(x, **kwargs).logits, labels) / sizes[units]).sum()
        loss.backward()
    norms = clipper.clip_and_accumulate()
    clipper.close()
    return clipper, norms


def check_against_autograd(model, units, mode, kwargs=None, c=None):
    """Norms equal autograd's; clipped sum equals the hand-clipped sum; every clipped unit has norm <= C."""
    x, labels = clip_batch()
    kwargs = dict(kwargs or {})
    kwargs.setdefault("position_ids", torch.arange(LENGTH).expand(ROWS, LENGTH))
    per_unit = brute_force_unit_grads(model, x, labels, units, kwargs)
    ref_norms = unit_norms(per_unit)
    c = float(ref_norms.min() * ref_norms.max()) ** 0.5 if c is None else c  # clips some units and not others
    clipper, norms = run_clipper(model, x, labels, units, mode, c, kwargs)
    torch.testing.assert_close(norms.double(), ref_norms, rtol=1e-4, atol=1e-6)
    expected, factors = clip_by_hand(per_unit, ref_norms, c)
    assert (factors < 1).any() and (factors == 1).any()
    for p, want in expected.items():
        torch.testing.assert_close(p.summed_grad, want.to(p.dtype), rtol=1e-4, atol=1e-6)
    clipped_norms = unit_norms({p: g * clipper.last_clip_factors.to(g.dtype).view(-1, *[1] * (g.dim() - 1))
                                for p, g in per_unit.items()})
    assert torch.all(clipped_norms <= c * (1 + 1e-5))
    return clipper


# ------------------------------------------------------------------ private trainers for the accounting tests
N, BATCH = 64, 8  # sampling rate 1/8
DELTA = 1 / (100 * N)  # the default δ: 0.01 / (number of units)


def private_trainer(out, config, callbacks=(), **args):
    """A private GPT-2 trainer on N learnable rows; one pass holds a whole Poisson draw (expected 8)."""
    config.physical_batch_size = 32
    trainer = stock_trainer(tiny_model("gpt2"), pattern_dataset(N), out, **args)
    for cb in callbacks:
        trainer.add_callback(cb)
    return memsinks.make_private(trainer, config)


def logged_epsilons(trainer):
    return {h["step"]: h["privacy/epsilon"] for h in trainer.state.log_history if "loss" in h}


def opacus_epsilon(accountant_cls, steps, sigma, q, delta):
    acc = accountant_cls()
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc.get_epsilon(delta=delta)


# ------------------------------------------------------------------ runs in two processes
DISTRIBUTED_BATCH, DISTRIBUTED_SIGMA = 8, 1.0  # global expected batch and σ of tests/privacy/distributed_run.py


def launch_private_run(output_dir, *extra: str, processes: int = 2) -> str:
    """tests/privacy/distributed_run.py under accelerate's launcher in ``processes`` CPU processes (gloo), the way
    the recipe tests launch (recipes/accelerate/cpu_2proc.yaml); returns its output, raises if it failed."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.recipes.helpers import ACCELERATE, REPO, free_port, launch_env

    script = Path(__file__).with_name("distributed_run.py")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / "cpu_2proc.yaml"),
           "--num_processes", str(processes), "--main_process_port", str(free_port()), str(script), str(output_dir),
           *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=launch_env(), cwd=str(REPO), timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"{script.name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc.stdout
