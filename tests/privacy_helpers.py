"""Shared pieces of the privacy tests: brute-force per-unit gradients, learnable data, a stock Trainer."""

from __future__ import annotations

import torch
from torch import nn

import memsinks
from memsinks.privacy.loss import causal_lm_row_losses


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
