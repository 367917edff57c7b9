#!/usr/bin/env python
"""The memsinks training recipe: one script for pretraining with split sinks and fine-tuning with append sinks.

    python recipes/train.py --config recipes/configs/pretrain_cpu.yaml
    accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml recipes/train.py \\
        --config recipes/configs/pretrain_cpu.yaml --training.output_dir runs/pretrain_2proc
    python recipes/train.py --config recipes/configs/finetune_cpu.yaml --resume

A YAML config names everything; ``--section.key value`` overrides one key (the value is read
as YAML, so ``--sinks.layers [0,1]`` works). ``--help-config`` lists every key. A key that
does not exist is an error naming the nearest one. The sections are:

- ``scenario``: ``pretrain`` (a model built from a config, trained from scratch) or
  ``finetune`` (a ``from_pretrained`` model);
- ``model``, ``data``, ``sinks``, ``lora``, ``privacy``, ``probes``, ``export``: this recipe's
  settings (``sinks`` and ``privacy`` also take every ``memsinks.SinksConfig`` /
  ``memsinks.PrivacyConfig`` field);
- ``training``: any ``transformers.TrainingArguments`` field;
- ``global_batch_size``: if set, ``per_device_train_batch_size`` is derived from it and the
  number of processes, so one config gives the same optimisation under any launch.

What the run does, in order: check the config and the launch (before any data is read),
prepare the data on rank 0 (saved under ``output_dir/recipe_data`` and reused by the other
ranks and by ``--resume``), build the model (+ LoRA, + sinks), train with the stock
``Trainer`` (probes as callbacks, DP-SGD through ``memsinks.make_private``), save the model
with sinks to ``output_dir/final``, and on rank 0 export the model without sinks to
``output_dir/shipped`` (``memsinks.ablation.export_without_sinks``) and print the ablation
report (``memsinks.ablation.removal_report``). See recipes/README.md; the parts live in
``recipes/memsinks_recipe/``.
"""

from __future__ import annotations

import os
import sys

import yaml

from memsinks._trainer_setup import sinks_trainer
from memsinks_recipe.arguments import config_help, load_recipe, parse_command_line
from memsinks_recipe.callbacks import LaunchRecord, RoutingAudit, StockLayoutCheckpoints, Throughput
from memsinks_recipe.common import (DATA_DIR, FINAL_DIR, SUMMARY_FILE, RecipeError, close_process_group, is_rank0, say,
                                    write_json)
from memsinks_recipe.config import Recipe, privacy_config
from memsinks_recipe.data import (PreparedData, data_fingerprint, load_prepared, load_tokenizer, on_rank0_then_all,
                                  prepare_data, save_prepared)
from memsinks_recipe.finish import export_and_report, save_final, zero_stage
from memsinks_recipe.launch import Launch, check_launch, check_resumed_launch, resume_checkpoint, training_arguments
from memsinks_recipe.model import build_model, zero3_lifted


def build_trainer(r: Recipe, args, data: PreparedData, model, launch: Launch, global_batch: int, make_model):
    """The stock ``Trainer`` with the probe callbacks and the recipe's own, made private if configured.

    Returns the trainer, its throughput meter and its routing audit (None without sinks).
    """
    import memsinks

    has_sinks = memsinks.has_sinks(model)
    callbacks = [LaunchRecord(launch, global_batch)]
    if launch.engine == "deepspeed" and launch.zero_stage == 3:
        callbacks.append(StockLayoutCheckpoints(make_model))
    throughput = Throughput()
    callbacks.append(throughput)
    audit = None
    if has_sinks and r.sinks.audit_routing:
        audit = RoutingAudit(args.output_dir)
        callbacks.append(audit)
    if r.probes.enabled:
        callbacks += _probe_callbacks(r, data, launch, args.world_size)
    trainer = sinks_trainer(model, args, data.train, data.tokenizer, callbacks=callbacks,
                            processing_class=data.tokenizer)
    if r.privacy.enabled:
        trainer = memsinks.make_private(trainer, privacy_config(r))
    return trainer, throughput, audit


def _probe_callbacks(r: Recipe, data: PreparedData, launch: Launch, world_size: int) -> list:
    """``ProbeCallback`` on the repeated rows against the held-out rows, and ``CanaryCallback`` on the canaries.

    The callbacks split their examples across ranks. Under ZeRO-3 every forward pass is a
    collective (each block's weights are gathered from all ranks), so every rank must run the same
    number of them: the probe sets are cut to a multiple of the number of processes.
    """
    import datasets

    from memsinks.callbacks import CanaryCallback, ProbeCallback

    even = launch.engine == "deepspeed" and launch.zero_stage == 3 and world_size > 1

    def fit(items: list, what: str) -> list:
        if not even or len(items) % world_size == 0:
            return items
        cut = len(items) - len(items) % world_size
        say(f"probes: ZeRO-3 needs the same work on every rank; probing {cut} of the {len(items)} {what}")
        return items[:cut]

    need = r.probes.prefix_len + r.probes.suffix_len
    keep = [i for i, s in enumerate(data.members) if len(s) >= need]
    if "extraction" in r.probes.probes and not keep:
        raise RecipeError(f"No repeated row has probes.prefix_len + probes.suffix_len = {need} tokens; lower "
                          "them or raise data.window.")
    if len(keep) < len(data.members):
        say(f"probes: {len(data.members) - len(keep)} of {len(data.members)} repeated rows are shorter than "
            f"{need} tokens and are left out of extraction")
    keep = fit(keep, "repeated rows")
    members = datasets.Dataset.from_dict({"input_ids": [data.members[i] for i in keep],
                                          "sequence_ids": [data.member_ids[i] for i in keep]})
    max_examples = r.probes.max_examples
    if even and max_examples is not None:
        max_examples = max(world_size, max_examples - max_examples % world_size)
    callbacks = []
    try:
        callbacks.append(ProbeCallback(
            data.tokenizer, members=members, nonmembers=fit(data.heldout, "held-out rows") or None,
            every_n_steps=r.probes.every_n_steps, probes=tuple(r.probes.probes), prefix_len=r.probes.prefix_len,
            suffix_len=r.probes.suffix_len, max_examples=max_examples, batch_size=r.probes.batch_size,
            seed=r.data.seed))
        canaries = fit(list(data.canary_texts), "canaries")
        if r.probes.canaries and canaries:
            callbacks.append(CanaryCallback(data.tokenizer, canaries, every_n_steps=r.probes.every_n_steps,
                                            num_samples=r.probes.canary_samples, batch_size=r.probes.batch_size,
                                            seed=r.data.seed))
    except ValueError as err:
        raise RecipeError(f"probes: {err}") from None
    return callbacks


def _check_engine(trainer, launch: Launch) -> None:
    """Refuse a launch whose engine the Trainer did not take up (it would silently train without it)."""
    wanted = {"deepspeed": trainer.is_deepspeed_enabled, "fsdp": trainer.is_fsdp_enabled}.get(launch.engine, True)
    if not wanted:
        hint = (" ACCELERATE_USE_CPU=true is set, and it switches DeepSpeed off; unset it (recipes/train.py "
                "already trains on the CPU when there is no GPU)." if os.environ.get("ACCELERATE_USE_CPU", "").lower()
                in ("1", "true", "yes") else "")
        raise RecipeError(f"The launch asked for {launch.engine} but the Trainer runs without it.{hint}")


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def _describe_model(r: Recipe, model) -> str:
    import memsinks

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    sinks = "no sinks"
    if memsinks.has_sinks(model):
        cfg = memsinks.get_sinks_config(model)
        pool = f"p_gen {cfg.p_gen}" if cfg.placement == "split" else f"{cfg.n_sink_units} units per MLP"
        sinks = f"{cfg.placement} sinks (p_mem {cfg.p_mem}, {pool}, routing seed {cfg.routing_seed})"
    extras = (", LoRA" if r.lora.enabled else "") + (", DP-SGD" if r.privacy.enabled else "")
    return f"{type(model).__name__}, {_count(total)} parameters ({_count(trainable)} trainable), {sinks}{extras}"


def _prepare(r: Recipe, output_dir: str, checkpoint: str | None) -> PreparedData:
    """Prepare the data on rank 0 (or check the saved copy), then read it on every rank."""
    data_dir = os.path.join(output_dir, DATA_DIR)
    fingerprint = data_fingerprint(r)
    base_tokenizer = load_tokenizer(r.model.name_or_path, r.model.gguf_file) if r.scenario == "finetune" else None

    def prepare() -> None:
        if os.path.isfile(os.path.join(data_dir, "settings.json")):
            load_prepared(data_dir, fingerprint)  # raises if the settings changed
            return
        if checkpoint is not None:
            raise RecipeError(f"--resume: {data_dir} is missing, so the data the checkpoint was trained on is unknown.")
        save_prepared(prepare_data(r, base_tokenizer), fingerprint, data_dir)

    on_rank0_then_all(prepare, "preparing the data")
    data = load_prepared(data_dir, fingerprint)
    say(f"data: {len(data.train)} training rows ({len(data.members)} repeated rows and {len(data.canaries)} canaries, "
        f"each {r.data.repeats}x), {len(data.heldout)} held out; longest row "
        f"{max(len(s) for s in data.train['input_ids'])} tokens; in {data_dir}")
    return data


def _summary(r: Recipe, trainer, launch: Launch, output, throughput, audit, checkpoint, final_dir: str) -> dict:
    """What ``run_summary.json`` records: the launch as the Trainer took it up, the loss curve, throughput, ε."""
    args, state = trainer.args, trainer.state
    summary = {
        "scenario": r.scenario, "world_size": args.world_size, "engine": launch.engine,
        "zero_stage": zero_stage(trainer), "deepspeed": trainer.is_deepspeed_enabled, "fsdp": trainer.is_fsdp_enabled,
        "wrapped_model": type(trainer.model_wrapped).__name__,
        "global_batch_size": args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps,
        "per_device_train_batch_size": args.per_device_train_batch_size, "steps": state.global_step,
        "sinks": r.sinks.enabled, "resumed_from": checkpoint, "loss_curve": _loss_curve(state.log_history),
        "tokens_per_second": throughput.tokens_per_second(), "throughput_steps": throughput.measured_steps(),
        "num_input_tokens_seen": int(state.num_input_tokens_seen or 0),
        "train_runtime": output.metrics.get("train_runtime"), "final_dir": final_dir,
        "routing_audit": None if audit is None or audit.result is None else
        {k: v for k, v in audit.result.items() if k != "per_rank"},
    }
    if summary["zero_stage"] == 3:  # parameters held as an empty local tensor: sharded across the ranks
        params = list(trainer.accelerator.unwrap_model(trainer.model_wrapped).parameters())
        summary["zero3_sharded_parameters"] = [sum(1 for p in params if hasattr(p, "ds_id") and p.numel() == 0),
                                               len(params)]
    if r.privacy.enabled:
        summary["epsilon"] = next((h["privacy/epsilon"] for h in reversed(state.log_history)
                                   if "privacy/epsilon" in h), None)
    return summary


def _loss_curve(log_history: list[dict]) -> list[list[float]]:
    """[step, loss] of every training-loss entry of the Trainer's log."""
    return [[h["step"], h["loss"]] for h in log_history if "loss" in h and "step" in h]


def run(r: Recipe, resume) -> int:
    """Train as the recipe says; returns the exit status."""
    import torch

    launch = Launch.from_env(r.training)
    check_launch(r, launch)
    output_dir = r.training["output_dir"]
    checkpoint = resume_checkpoint(resume, output_dir)
    args = training_arguments(r, launch)
    if args.world_size != launch.world_size:
        raise RecipeError(f"The environment says {launch.world_size} processes but the Trainer sees "
                          f"{args.world_size}; launch with accelerate launch or torchrun, not both.")
    global_batch = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
    say(f"{r.scenario} ({r.source}): {launch.describe()}, device {args.device.type}, global batch {global_batch} "
        f"({args.per_device_train_batch_size} per device x {args.world_size} x {args.gradient_accumulation_steps} "
        "accumulation)")
    if checkpoint is not None:
        check_resumed_launch(checkpoint, launch, global_batch)

    data = _prepare(r, output_dir, checkpoint)
    max_len = max(len(s) for s in data.train["input_ids"])
    model = build_model(r, data.tokenizer, max_len, args)
    say(f"model: {_describe_model(r, model)}")

    def make_model():  # a fresh copy on this process, for rewriting ZeRO-3 checkpoints
        return build_model(r, data.tokenizer, max_len, args)

    trainer, throughput, audit = build_trainer(r, args, data, model, launch, global_batch, make_model)
    _check_engine(trainer, launch)
    output = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_state()
    final_dir = os.path.join(output_dir, FINAL_DIR)
    save_final(trainer, r, data, final_dir, make_model)
    tps = throughput.tokens_per_second()
    say(f"trained {trainer.state.global_step} steps in {output.metrics.get('train_runtime', 0):.1f} s"
        + (f"; {tps:,.0f} tokens/s over all processes (steps after warm-up)" if tps else "")
        + f"; model with sinks in {final_dir}")

    summary = _summary(r, trainer, launch, output, throughput, audit, checkpoint, final_dir)
    if args.process_index == 0:
        if r.export.enabled and r.sinks.enabled:
            with zero3_lifted(args):  # loads the saved models whole, on this process alone
                summary.update(export_and_report(r, data, final_dir, output_dir))
        write_json(os.path.join(output_dir, SUMMARY_FILE), summary)
        say(f"summary: {os.path.join(output_dir, SUMMARY_FILE)}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return 0


USAGE = """usage: train.py --config FILE [--section.key VALUE ...] [--resume [CHECKPOINT]]
                [--print-config] [--help-config]

  --config FILE          the recipe (recipes/configs/*.yaml)
  --section.key VALUE    override one key, e.g. --sinks.p_mem 0.2 --training.max_steps 50
  --resume [CHECKPOINT]  continue from CHECKPOINT, or from the latest checkpoint in training.output_dir
  --print-config         print the resolved config as YAML and exit
  --help-config          list every config key and exit

Launch it with python (one process), torchrun, or accelerate launch --config_file recipes/accelerate/X.yaml.
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        flags, overrides = parse_command_line(argv)
        if flags.help:
            print(USAGE)
            return 0
        if flags.help_config:
            print(config_help())
            return 0
        recipe = load_recipe(flags.config, overrides)
        if flags.print_config:
            print(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
            return 0
        code = run(recipe, flags.resume)
        close_process_group()
        return code
    except RecipeError as err:
        if is_rank0():
            print(f"train.py: error: {err}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
