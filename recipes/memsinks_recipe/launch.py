"""What launched the script (``accelerate launch``, ``torchrun`` or plain python), and what it cannot run.

Everything here reads the environment the launchers set (``WORLD_SIZE``, ``RANK``,
``ACCELERATE_USE_DEEPSPEED``, ``ACCELERATE_DEEPSPEED_ZERO_STAGE``, ``ACCELERATE_USE_FSDP``, ...),
so an incompatible launch is refused before any process group is created or any data read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from memsinks_recipe.common import LAUNCH_FILE, RecipeError, read_json, say
from memsinks_recipe.config import Recipe


@dataclass
class Launch:
    """How the script was started, read from the environment ``accelerate launch`` / ``torchrun`` set."""

    world_size: int
    rank: int
    engine: str  # "single", "ddp", "deepspeed", "fsdp"
    zero_stage: int | None = None
    offload: str | None = None
    mixed_precision: str | None = None

    @classmethod
    def from_env(cls, training: dict | None = None) -> "Launch":
        env = os.environ
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        truthy = ("1", "true", "yes")
        engine = "ddp" if world > 1 else "single"
        zero_stage = offload = None
        if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() in truthy or (training or {}).get("deepspeed"):
            engine = "deepspeed"
            stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
            zero_stage = int(stage) if stage and stage.isdigit() else _stage_in_file(
                env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or (training or {}).get("deepspeed"))
            devices = [("optimizer", env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none")),
                       ("parameters", env.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none"))]
            offload = ", ".join(f"{what} to {device}" for what, device in devices if device not in ("", "none")) or None
        elif env.get("ACCELERATE_USE_FSDP", "").lower() in truthy or (training or {}).get("fsdp"):
            engine = "fsdp"
        mp = env.get("ACCELERATE_MIXED_PRECISION")
        return cls(world, rank, engine, zero_stage, offload, None if mp in (None, "no") else mp)

    def describe(self) -> str:
        out = {"single": "one process", "ddp": f"DDP, {self.world_size} processes",
               "deepspeed": f"DeepSpeed ZeRO-{self.zero_stage if self.zero_stage is not None else '?'}, "
                            f"{self.world_size} process(es)",
               "fsdp": f"FSDP, {self.world_size} process(es)"}[self.engine]
        if self.offload:
            out += f", offloading {self.offload}"
        return out


def _stage_in_file(config) -> int | None:
    """The ZeRO stage of a DeepSpeed config (a JSON file or a dict), if it states one."""
    if isinstance(config, str) and os.path.isfile(config):
        import json

        with open(config, encoding="utf-8") as f:
            config = json.load(f)
    stage = config.get("zero_optimization", {}).get("stage") if isinstance(config, dict) else None
    return stage if isinstance(stage, int) else None


def check_launch(r: Recipe, launch: Launch) -> None:
    """Refuse launches the chosen settings cannot run under, naming the accelerate config to use instead."""
    if r.privacy.enabled:
        if launch.engine in ("deepspeed", "fsdp"):
            raise RecipeError(
                f"privacy.enabled (DP-SGD) runs in one process or under DDP, but this launch is {launch.describe()}: "
                "DeepSpeed and FSDP shard parameters and gradients, and per-unit clipping needs each unit's whole "
                "gradient in one process. Launch with recipes/accelerate/multi_gpu.yaml (DDP) or "
                "recipes/accelerate/single_process.yaml (or plain `python recipes/train.py`), or set "
                "privacy.enabled: false.")
        mp = r.training.get("fp16") or launch.mixed_precision == "fp16"
        if mp:
            raise RecipeError("privacy.enabled with fp16 mixed precision: the fp16 gradient scaler would rescale "
                              "clipped gradients; use bf16 or fp32 (accelerate config mixed_precision: bf16 or no).")
    sharded = launch.engine == "fsdp" or (launch.engine == "deepspeed" and launch.zero_stage == 3)
    if r.lora.enabled and sharded and r.export.enabled:
        what = "FSDP" if launch.engine == "fsdp" else "ZeRO-3"
        raise RecipeError(f"LoRA under {what} with export.enabled: merging the adapters needs the full weights on one "
                          "process. Train with DDP or ZeRO-2 (recipes/accelerate/multi_gpu.yaml, "
                          "deepspeed_zero2.yaml) or set export.enabled: false and merge afterwards.")
    gbs = r.global_batch_size
    if gbs is not None:
        accum = int(r.training.get("gradient_accumulation_steps", 1))
        per = gbs // (launch.world_size * accum)
        if per < 1 or per * launch.world_size * accum != gbs:
            raise RecipeError(
                f"global_batch_size={gbs} is not divisible by {launch.world_size} process(es) x "
                f"{accum} gradient_accumulation_steps; choose a multiple of {launch.world_size * accum}.")
        given = r.training.get("per_device_train_batch_size")
        if given is not None and given != per:
            raise RecipeError(
                f"global_batch_size={gbs} gives per_device_train_batch_size={per} under {launch.world_size} "
                f"process(es), but training.per_device_train_batch_size={given} is set too; remove one of them.")



def training_arguments(r: Recipe, launch: Launch):
    """``TrainingArguments`` from the training section, with what the recipe needs set.

    ``use_cpu`` when there is no GPU: besides keeping the Trainer off CUDA, it is what makes
    the processes of accelerate's multi-GPU launcher (recipes/accelerate/cpu_2proc.yaml) join a
    gloo process group as CPU processes. Tokens are counted (``include_num_input_tokens_seen``)
    for the throughput line; DDP is told every parameter is used in each forward.
    """
    import torch
    from transformers import TrainingArguments

    values = dict(r.training)
    if not torch.cuda.is_available():
        values["use_cpu"] = True
    if r.global_batch_size is not None:
        accum = int(values.get("gradient_accumulation_steps", 1))
        values["per_device_train_batch_size"] = r.global_batch_size // (launch.world_size * accum)
    if values.get("include_num_input_tokens_seen", "no") in ("no", False):
        values["include_num_input_tokens_seen"] = "non_padding"
    values.setdefault("report_to", "none")
    values.setdefault("ddp_find_unused_parameters", False)  # sinks, LoRA and the stock models use every parameter
    try:
        return TrainingArguments(**values)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"training: {err}") from None


def resume_checkpoint(resume, output_dir: str) -> str | None:
    """The checkpoint ``--resume`` names (True: the latest in output_dir); None to start afresh.

    Without ``--resume``, an output_dir that already holds checkpoints is refused: training
    over it would interleave two runs' checkpoints.
    """
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if resume is None:
        if last is not None:
            raise RecipeError(f"{output_dir} already holds {os.path.basename(last)} from an earlier run. Pass --resume "
                              "to continue it, or choose a new training.output_dir.")
        return None
    if resume is True:
        if last is None:
            raise RecipeError(f"--resume: no checkpoint-* directory in {output_dir}. Give the checkpoint with "
                              "--resume PATH, or start without --resume.")
        return last
    if not os.path.isdir(resume):
        raise RecipeError(f"--resume {resume}: no such checkpoint directory.")
    return resume


def _engine_family(engine: str) -> str:
    """Engines whose checkpoints (optimizer state) are interchangeable share a family."""
    return "plain" if engine in ("single", "ddp") else engine


def check_resumed_launch(checkpoint: str, launch: Launch, global_batch: int) -> None:
    """Compare the launch with the one that saved ``checkpoint``: any number of processes, the same kind of engine.

    A different global batch is allowed with a warning (the data order and schedule change).
    """
    path = os.path.join(checkpoint, LAUNCH_FILE)
    if not os.path.isfile(path):
        return
    saved = read_json(path)
    say(f"resuming {checkpoint} (saved under {saved['world_size']} process(es), {saved['engine']}) under "
        f"{launch.describe()}")
    if _engine_family(saved["engine"]) != _engine_family(launch.engine):
        raise RecipeError(f"{checkpoint} was saved under {saved['engine']} and this launch is {launch.engine}: their "
                          "optimizer states are stored differently. Resume with the same kind of engine (any number "
                          "of processes); DDP and a single process are interchangeable.")
    if saved["global_batch_size"] != global_batch:
        say(f"WARNING: the checkpoint was trained with a global batch of {saved['global_batch_size']} and this run "
            f"uses {global_batch}: the data order and the learning-rate schedule will differ from an uninterrupted "
            "run. Set global_batch_size (or per_device_train_batch_size) to match.")
