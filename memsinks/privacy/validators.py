"""Checks run by ``make_private`` before any training step: clear errors instead of a wrong ε.

- ``check_model``: layers that mix examples in the forward (BatchNorm), nothing to train.
- ``check_trainer``: Trainer settings that would bypass or break per-unit clipping.
- ``check_collator``: the collated batch has labels, one row per example, and the ID column
  in ``sequence_id`` mode.
- ``check_per_unit_gradients``: on a synthetic batch (no training data), the clipper's
  per-row gradient norms and gradient sum equal what autograd gives row by row. This
  catches any parameter used outside the forward of its module, broadcast inputs, or an
  unusual layer, and names it, with the fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from memsinks.data import SEQUENCE_IDS
from memsinks.model import get_sinks_config, has_sinks, sinks_mode, unwrap_model
from memsinks.privacy.grad_sample import PerUnitClipper
from memsinks.privacy.loss import causal_lm_row_losses

_MIXING_NORMS = (nn.modules.batchnorm._BatchNorm,)


def check_model(model: nn.Module) -> None:
    """Refuse layers that make one example's output depend on the others', models with nothing to train, and
    sinks that would train outside per-example clipping."""
    for name, module in model.named_modules():
        if isinstance(module, _MIXING_NORMS):
            raise ValueError(
                f"{name} is a {type(module).__name__}: batch normalisation mixes the examples of a batch, so no "
                "per-example gradient exists and DP-SGD's guarantee would not hold (even with the layer frozen, "
                "since training mode still uses batch statistics). Replace it with GroupNorm or LayerNorm "
                "(opacus.validators.ModuleValidator.fix(model) does this) before make_private."
            )
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("The model has no trainable parameters; nothing to train privately.")
    inner = unwrap_model(model)
    config = get_sinks_config(inner) if has_sinks(inner) else None
    if config is not None and config.routes_memorized:
        raise ValueError(
            f"The model's SinksConfig has memorized_threshold={config.memorized_threshold} (the default of "
            "placement='append'): routing memorized tokens trains the sinks through a second backward pass that "
            "per-example clipping does not see, so DP-SGD's guarantee would not cover it. Add the sinks with "
            "memorized_threshold=0 to train with DP-SGD, or train without make_private to route memorized tokens.")


def check_trainer(trainer) -> None:
    """Refuse Trainer settings that DP training cannot honour; say what to change."""
    args = trainer.args
    problems = []
    if getattr(args, "fp16", False):
        problems.append("fp16=True: the fp16 GradScaler would unscale gradients DP never scaled; use bf16=True or fp32")
    if getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False):
        problems.append("DeepSpeed / FSDP: they shard parameters and gradients across processes, and per-unit "
                        "clipping needs each unit's whole gradient on one process; use DDP (one process per device: "
                        "accelerate launch or torchrun) or one process")
    if getattr(args, "n_gpu", 0) > 1:
        problems.append(f"{args.n_gpu} GPUs in one process (torch.nn.DataParallel): the clipping hooks see one "
                        "replica; launch one process per device (accelerate launch or torchrun) for DDP")
    if getattr(args, "torch_compile", False):
        problems.append("torch_compile=True: the per-example gradient hooks need the eager model")
    if getattr(args, "auto_find_batch_size", False):
        problems.append("auto_find_batch_size=True: the batch size sets the sampling rate in the privacy "
                        "accounting; set PrivacyConfig.physical_batch_size for memory instead")
    if getattr(args, "label_smoothing_factor", 0.0):
        problems.append("label_smoothing_factor > 0: the private loss is the plain next-token cross-entropy")
    if getattr(trainer, "compute_loss_func", None) is not None:
        problems.append("compute_loss_func: DP needs one loss per privacy unit, computed by memsinks")
    if getattr(args, "activation_checkpointing", False) or getattr(args, "gradient_checkpointing", False) or \
            getattr(unwrap_model(trainer.model), "is_gradient_checkpointing", False):
        problems.append("activation/gradient checkpointing: not supported with per-example gradient hooks yet")
    if getattr(trainer, "neftune_noise_alpha", None) is not None:
        problems.append("neftune_noise_alpha: NEFTune noise is not part of the privacy analysis")
    dataset = trainer.train_dataset
    if dataset is None:
        problems.append("no train_dataset")
    elif isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        problems.append("an iterable train_dataset: Poisson sampling needs a dataset of known size with random access")
    if problems:
        raise ValueError("make_private cannot train this Trainer privately:\n  - " + "\n  - ".join(problems))


def check_collator(collator, examples: list, privacy_unit: str, takes_ids: bool) -> None:
    """Collate a couple of training examples and check what the private step relies on."""
    batch = collator(examples)
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise ValueError("The data collator must return a dict with 'input_ids' (and 'labels').")
    if "labels" not in batch:
        raise ValueError(
            "The data collator returns no 'labels'. DP training computes each example's own next-token loss from "
            "them (-100 for tokens that do not count). Use memsinks.SinksDataCollator(tokenizer, require_ids=...) "
            "or DataCollatorForLanguageModeling(tokenizer, mlm=False)."
        )
    rows = batch["input_ids"].shape[0]
    if rows != len(examples):
        raise ValueError(
            f"The data collator turned {len(examples)} examples into {rows} rows (packing?). DP accounting needs one "
            "row per example so that each privacy unit's rows are known; pack before building the dataset instead."
        )
    if privacy_unit == "sequence_id" and SEQUENCE_IDS not in batch:
        raise ValueError(
            f"privacy_unit='sequence_id' but the data collator dropped the '{SEQUENCE_IDS}' column, so the rows of one "
            "user/document cannot be told apart in a batch. Use memsinks.SinksDataCollator(tokenizer, "
            "require_ids=True), or make your collator keep the column"
            + ("." if takes_ids else " (the model's forward does not take it; memsinks removes it before the forward).")
        )


def check_per_unit_gradients(model: nn.Module, clipper: PerUnitClipper, model_inputs, vocab_size: int,
                             rtol: float = 1e-3) -> None:
    """Compare the clipper with row-by-row autograd on a synthetic batch; raise naming any mismatch.

    Args:
        model_inputs: callable(batch dict) -> kwargs for the model's forward, the same
            preparation the private training step uses (per-row position_ids, ID handling).
    """
    generator = torch.Generator().manual_seed(1234)
    rows, length = 3, 8
    device = next(model.parameters()).device
    input_ids = torch.randint(0, vocab_size, (rows, length), generator=generator).to(device)
    labels = input_ids.clone()
    labels[0, 2] = -100
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if has_sinks(model):
        batch[SEQUENCE_IDS] = torch.tensor([11, 22, 33], device=device)
    params = clipper.params
    was_training = model.training
    model.eval()  # no dropout: the two computations must see the same function
    context = sinks_mode(model, "own" if has_sinks(model) else None)
    saved = {id(p): getattr(p, "summed_grad", None) for p in params}
    try:
        with context:
            reference = []
            for r in range(rows):
                model.zero_grad(set_to_none=True)
                sub = {k: v[r:r + 1] for k, v in batch.items()}
                causal_lm_row_losses(model(**model_inputs(sub)).logits, labels[r:r + 1]).sum().backward()
                reference.append([torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params])
            model.zero_grad(set_to_none=True)
            for p in params:
                p.summed_grad = None
            with clipper.capture(torch.arange(rows, device=device), rows):
                causal_lm_row_losses(model(**model_inputs(batch)).logits, labels).sum().backward()
            norms = clipper.clip_and_accumulate(max_grad_norm=math.inf)
        ref_norms = torch.stack([torch.sqrt(sum(g.double().pow(2).sum() for g in row)) for row in reference]).to(norms)
        bad = []
        for i, p in enumerate(params):
            ref = sum(row[i] for row in reference)
            scale = ref.abs().max().item() + 1e-8
            if not torch.allclose(p.summed_grad, ref, rtol=rtol, atol=rtol * scale):
                bad.append(clipper.name_of(p))
        if not bad and not torch.allclose(norms, ref_norms, rtol=rtol, atol=1e-7):
            bad.append("(per-row norms differ while sums agree: an input broadcast over the batch)")
    finally:
        for p in params:
            p.summed_grad = saved[id(p)]
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if bad:
        raise ValueError(
            "memsinks cannot compute correct per-example gradients for: " + ", ".join(bad) + ". Such a parameter is "
            "used outside its module's forward, shared in a way the hooks do not see, or inside a layer that mixes "
            "rows. Fix: freeze it (param.requires_grad_(False)); untie a shared weight; or use a standard "
            "nn.Linear / nn.Embedding / nn.LayerNorm module for it."
        )
