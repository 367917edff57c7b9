"""The stock ``transformers.Trainer`` set up the way the demo, the benchmarks and the recipes train with sinks.

``sinks_trainer`` pairs a model with ``memsinks.SinksDataCollator`` (sequence IDs required
exactly when the model has sinks); ``experiment_arguments`` are the ``TrainingArguments`` of
the small experiments: AdamW on a cosine schedule with warm-up, no weight decay, no
checkpoints, no reporting, no progress bar, data loaded in the main process, on the GPU when
there is one. The recipes bring their own arguments from their config.
"""

from __future__ import annotations

from typing import Callable

import torch


def experiment_arguments(output_dir: str, *, batch_size: int, learning_rate: float, seed: int,
                         epochs: float | None = None, max_steps: int | None = None, warmup_steps: int = 10,
                         logging_steps: int = 50, **overrides):
    """``TrainingArguments`` for ``epochs`` passes or ``max_steps`` optimizer steps (``overrides`` win)."""
    from transformers import TrainingArguments

    if (epochs is None) == (max_steps is None):
        raise ValueError(f"Give either epochs or max_steps; got epochs={epochs}, max_steps={max_steps}.")
    length = {"num_train_epochs": epochs} if epochs is not None else {"max_steps": max_steps}
    values = dict(
        output_dir=output_dir, per_device_train_batch_size=batch_size, learning_rate=learning_rate,
        lr_scheduler_type="cosine", warmup_steps=warmup_steps, weight_decay=0.0, logging_steps=logging_steps,
        save_strategy="no", report_to=[], seed=seed, disable_tqdm=True, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(), **length,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def sinks_trainer(model, args, dataset, tokenizer, *, wrap_collator: Callable | None = None, callbacks=None,
                  **trainer_kwargs):
    """The stock ``Trainer`` on ``dataset`` with ``SinksDataCollator`` (wrapped by ``wrap_collator`` if given)."""
    from transformers import Trainer

    import memsinks

    collator = memsinks.SinksDataCollator(tokenizer, require_ids=memsinks.has_sinks(model))
    if wrap_collator is not None:
        collator = wrap_collator(collator)
    return Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=callbacks,
                   **trainer_kwargs)
