"""What every part of the recipe shares: its error type, printing once, JSON files, output names."""

from __future__ import annotations

import json
import os
from typing import Any

DATA_DIR = "recipe_data"  # prepared data, under training.output_dir
FINAL_DIR = "final"  # the trained model with sinks
SHIPPED_DIR = "shipped"  # the exported model without sinks
LAUNCH_FILE = "recipe_launch.json"  # in every checkpoint: processes, engine, global batch
SUMMARY_FILE = "run_summary.json"
AUDIT_FILE = "routing_audit.json"
REPORT_FILE = "ablation_report.json"


class RecipeError(ValueError):
    """A problem with the config, the launch or the data, found before training; the message says what to do."""


def is_rank0() -> bool:
    """Whether this is the first process (read from the environment, so it works before any process group)."""
    return int(os.environ.get("RANK", "0")) == 0


def close_process_group() -> None:
    """After a successful run: meet every process, then tear the process group down.

    A process that exits with the group still up can abort in gloo's teardown ("terminate called
    without an active exception") while another process still has collectives in flight.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def say(message: str) -> None:
    """Print a line once (on rank 0), prefixed so it stands out among the Trainer's logs."""
    if is_rank0():
        print(f"[recipe] {message}", flush=True)


def write_json(path: str, payload: Any) -> None:
    """Write strict JSON (no NaN) atomically."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
