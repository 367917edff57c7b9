"""Fine-tune a copy of the base model as one arm, with the stock ``transformers.Trainer``."""

from __future__ import annotations

import copy
import functools
import math
import tempfile
import time

import datasets
import torch
from transformers import TrainerCallback

import memsinks
from memorization_lib.dedup import exact_clusters
from memorization_lib.goldfish import GoldfishCollator
from memsinks._trainer_setup import experiment_arguments, sinks_trainer
from memsinks.sink_learning_rate import _inner_optimizer
from memsinks.sink_slices import sink_slices


def training_rows(data, arm) -> list:
    """The rows the arm trains on, in the seed's order: all of them, or the first of each set of identical rows."""
    rows = data.training_rows()
    if arm.dedup:
        clusters = exact_clusters([r.tokens for r in rows])
        rows = [r for i, r in enumerate(rows) if clusters[i] == i]
    return rows


def training_length(data, settings, arm) -> dict:
    """How long the arm trains, as ``experiment_arguments`` takes it: ``settings.epochs`` passes over its rows, or
    (``dedup_same_steps``) as many optimizer steps as those epochs take over every row, as the Trainer counts them."""
    if arm.dedup_same_steps:
        return {"max_steps": math.ceil(settings.epochs * math.ceil(len(data.training_rows()) / settings.batch_size))}
    return {"epochs": settings.epochs}


def training_dataset(data, tokenizer, arm) -> datasets.Dataset:
    """The training rows with their sequence IDs (the person's, or the row's own with ``per_record_ids``); a
    ``private_mask`` column from ``mark_private_spans`` if the arm uses one (turned into ``labels`` with -100 at the
    marked tokens if the arm masks them instead)."""
    rows = training_rows(data, arm)
    ds = datasets.Dataset.from_dict({
        "input_ids": [r.tokens for r in rows],
        memsinks.data.SEQUENCE_IDS: [data.record_id(r, arm.per_record_ids) for r in rows],
    })
    if arm.private_mask:
        ds = memsinks.mark_private_spans(ds, tokenizer)
    if arm.mask_private_labels:
        ds = ds.map(lambda row: {"labels": [-100 if m else t for t, m in zip(row["input_ids"], row["private_mask"])]})
    return ds


def private_mask_coverage(ds, rows) -> dict:
    """How well the default patterns found the secrets in ``rows`` (the records behind ``ds``'s rows): recall over
    secret tokens, share of marked tokens that are secret."""
    hit = secret = marked = 0
    for row, mask in zip(rows, ds["private_mask"]):
        hit += sum(a and b for a, b in zip(row.secret, mask))
        secret += sum(row.secret)
        marked += sum(mask)
    return {"recall": hit / max(secret, 1), "precision": hit / max(marked, 1)}


def _apply(arm, base, settings):
    model = copy.deepcopy(base)
    if arm.lora:
        from peft import LoraConfig, get_peft_model

        targets = [n for n in ("q_proj", "k_proj", "v_proj", "o_proj", "c_attn") if any(
            name.endswith(n) for name, _ in model.named_modules())]
        model = get_peft_model(model, LoraConfig(r=settings.lora_rank, lora_alpha=2 * settings.lora_rank,
                                                 target_modules=targets, lora_dropout=0.0))
    if arm.freeze_mlp:  # before the sinks are added, so that only the pretrained units are frozen
        for name, param in model.named_parameters():
            if ".mlp." in name:
                param.requires_grad_(False)
    if arm.has_sinks:
        memsinks.add_sinks(model, memsinks.SinksConfig(**arm.sinks))
    return model


class DecayToBase(TrainerCallback):
    """After each optimizer step, ``theta -= lr * rate * (theta - theta_0)`` for the trainable parameters that are not
    sinks (``theta_0``: their values when training began): decoupled decay toward the pretrained model. A tensor that
    holds sink slices (``split`` placement) is left alone whole; the benchmark appends its sinks."""

    def __init__(self, rate: float):
        self.rate = rate
        self.handle = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        sinks = {id(s.param) for s in sink_slices(model)}
        start = {id(p): p.detach().clone() for p in model.parameters() if p.requires_grad and id(p) not in sinks}
        inner = _inner_optimizer(optimizer)

        @torch.no_grad()
        def decay(opt, *_):
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) in start:
                        p.sub_(p - start[id(p)], alpha=group["lr"] * self.rate)

        self.handle = inner.register_step_post_hook(decay)

    def on_train_end(self, args, state, control, **kwargs):
        if self.handle is not None:
            self.handle.remove()


def arm_trainer(arm, base, data, tokenizer, settings, seed: int, output_dir: str, callbacks=()):
    """(trainer, model, dataset) of the arm: ``model`` a copy of ``base`` changed as the arm says, ``dataset`` the
    arm's rows, ``trainer`` the stock Trainer (made private for DP) with the run's steps and learning rate."""
    model = _apply(arm, base, settings)
    ds = training_dataset(data, tokenizer, arm)
    args = experiment_arguments(output_dir, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                                seed=seed, warmup_steps=0, lr_scheduler_type="linear", logging_steps=10**9,
                                **training_length(data, settings, arm))
    wrap = None
    if arm.goldfish:
        wrap = functools.partial(GoldfishCollator, k=settings.goldfish_k, h=settings.goldfish_h)
    callbacks = list(callbacks) + ([DecayToBase(arm.decay_to_base)] if arm.decay_to_base else [])
    trainer = sinks_trainer(model, args, ds, tokenizer, wrap_collator=wrap, callbacks=callbacks or None)
    if arm.dp:
        trainer = memsinks.make_private(trainer, memsinks.PrivacyConfig(
            target_epsilon=settings.dp_epsilon, max_grad_norm=settings.dp_max_grad_norm,
            privacy_unit="sequence_id", physical_batch_size=max(settings.batch_size, settings.headline_repeats)))
    return trainer, model, ds


def train_arm(arm, base, data, tokenizer, settings, seed: int) -> tuple[torch.nn.Module, dict]:
    """(the fine-tuned model, training statistics: tokens/s, steps, final loss, private-mask coverage)."""
    with tempfile.TemporaryDirectory() as out:
        trainer, model, ds = arm_trainer(arm, base, data, tokenizer, settings, seed, out)
        start = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - start
    epochs_run = result.global_step / math.ceil(len(ds) / settings.batch_size)
    tokens = sum(len(t) for t in ds["input_ids"]) * epochs_run
    stats = {"tokens_per_s": tokens / seconds, "train_seconds": seconds, "steps": result.global_step,
             "train_loss": result.training_loss}
    if arm.private_mask:
        stats["private_mask"] = private_mask_coverage(ds, training_rows(data, arm))
    routed = getattr(model.forward, "routed", None)  # tokens memorized_margin sent to the sinks alone
    if routed is not None and routed.labelled:
        stats["routed_fraction"] = routed.fraction
    if arm.lora:
        model = model.merge_and_unload()
    return model.eval(), stats
