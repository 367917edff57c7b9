"""Step time of the arms with a step-time target against standard fine-tuning, measured in one run.

Training steps (forward, backward, AdamW) of the arms alternate on the same batch, rotating the
order, so load on the machine hits every arm alike; the median step times give the ratios. The
sinks' warm-up (``SinksConfig.sink_warmup_steps``, a few of a run's steps) is marked done first,
so the steps timed are the ones the rest of a run takes.
"""

from __future__ import annotations

import statistics
import time

import torch

import memsinks
from memsinks.warmup import PROGRESS_BUFFER

from .train import _apply

TIMED_ARMS = ("standard", "sinks_defaults", "sinks", "sinks_private", "sinks_private_marginal", "sinks_memorized",
              "sinks_memorized_top10", "sinks_memorized_top10_missed", "sinks_memorized_top5_missed")


def _batch(data, tokenizer, n: int):
    rows = data.training_rows()[:n]
    width = max(len(r.tokens) for r in rows)
    pad = tokenizer.pad_token_id
    x = torch.full((n, width), pad)
    labels = torch.full((n, width), -100)
    private = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, :len(r.tokens)] = torch.tensor(r.tokens)
        labels[i, :len(r.tokens)] = torch.tensor(r.tokens)
        private[i, :len(r.tokens)] = torch.tensor(r.secret)
    ids = torch.tensor([data.record_id(r) for r in rows])
    return x, labels, ids, private


def _finish_warmup(model) -> None:
    """Mark the sinks' warm-up as done (its progress buffer at the configured count), as after a run's first steps."""
    if not memsinks.has_sinks(model):
        return
    steps = memsinks.get_sinks_config(model).sink_warmup_steps
    for name, buffer in model.named_buffers():
        if name.endswith(PROGRESS_BUFFER):
            buffer.fill_(steps)


def step_time_ratios(arms, base, data, tokenizer, settings, steps: int) -> dict[str, float]:
    """Median step time of each timed arm over ``standard``'s (arms absent from ``arms`` are skipped)."""
    chosen = [a for a in arms if a.name in TIMED_ARMS]
    if not any(a.name == "standard" for a in chosen) or len(chosen) < 2:
        return {}
    x, labels, ids, private = _batch(data, tokenizer, settings.batch_size)
    runs = {}
    for arm in chosen:
        model = _apply(arm, base, settings).train()
        _finish_warmup(model)
        kwargs = {"input_ids": x, "labels": labels}
        if arm.has_sinks:
            kwargs["sequence_ids"] = ids
        if arm.private_mask:
            kwargs["private_mask"] = private
        runs[arm.name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0), kwargs, [])
    names = list(runs)
    for step in range(steps + 1):
        order = names[step % len(names):] + names[:step % len(names)]
        for name in order:
            model, opt, kwargs, times = runs[name]
            start = time.perf_counter()
            model(**kwargs).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step:  # the first round warms up
                times.append(time.perf_counter() - start)
    reference = statistics.median(runs["standard"][3])
    return {name: statistics.median(times) / reference for name, (_, _, _, times) in runs.items()}
