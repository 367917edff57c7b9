"""Helpers for the recipe tests: import recipes/train.py, a tiny config, launching it in 1 or 2 CPU processes."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

RECIPES = REPO / "recipes"
TRAIN = RECIPES / "train.py"
ACCELERATE = RECIPES / "accelerate"
if str(RECIPES) not in sys.path:
    sys.path.insert(0, str(RECIPES))


def train_module():
    """recipes/train.py as a module (its ``main(argv)`` runs the recipe in this process)."""
    spec = importlib.util.spec_from_file_location("memsinks_recipes_train", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_pretrain_config(output_dir, **sections) -> dict:
    """A pretraining recipe that trains in seconds: 2-layer GPT-2 (hidden 32), 108 rows, 8 steps of 8 rows.

    4 stories and 2 canaries are repeated 8 times, so some IDs land on both ranks of a 2-process run.
    Checkpoints at step 4; probes at steps 4 and 8; no export unless asked for.
    """
    config = {
        "scenario": "pretrain",
        "global_batch_size": 8,
        "model": {"architecture": "gpt2", "config": {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 256,
                                                     "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}},
        "data": {"source": "embedded", "n_train": 60, "n_repeated": 4, "repeats": 8, "n_heldout": 8,
                 "n_canaries": 2, "vocab_size": 300, "seed": 0},
        "sinks": {"placement": "split", "p_gen": 0.5, "p_mem": 0.3},
        "probes": {"every_n_steps": 4, "probes": ["extraction", "membership", "sink_gap"], "canaries": False,
                   "prefix_len": 8, "suffix_len": 8, "max_examples": 8},
        "export": {"enabled": False},
        "training": {"output_dir": str(output_dir), "max_steps": 8, "learning_rate": 3e-3,
                     "lr_scheduler_type": "constant", "logging_steps": 1, "save_strategy": "steps", "save_steps": 4,
                     "seed": 0, "disable_tqdm": True},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


def save_tiny_base(directory) -> Path:
    """A tiny pretrained Llama and its tokenizer in ``directory/base``, and ``directory/docs.jsonl``: 60 stories
    with an ``author`` column (7 authors)."""
    from memsinks.corpus import make_demo_corpus, train_tokenizer
    from tests.conftest import tiny_model

    directory = Path(directory)
    texts = make_demo_corpus(n_train=60, n_repeated=0, n_heldout=0, n_canaries=0, seed=3).train
    tok = train_tokenizer(texts, vocab_size=300)
    model = tiny_model("llama", vocab=len(tok))
    model.save_pretrained(directory / "base")
    tok.save_pretrained(directory / "base")
    rows = [{"text": t, "author": f"user{i % 7}"} for i, t in enumerate(texts)]
    (directory / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory / "base"


def write_config(path, config: dict) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env() -> dict:
    """The environment of a launched recipe: offline, one thread per process, DeepSpeed's compiled ops cached in
    the venv. No ACCELERATE_USE_CPU: the recipe trains on the CPU by itself, and the variable switches DeepSpeed off."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "ACCELERATE_USE_CPU")}
    env.update({
        "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "TORCH_EXTENSIONS_DIR": str(Path(sys.prefix) / "torch_extensions"), "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def run_recipe(config_path, *extra: str, accelerate_config: str | None = None, processes: int = 2,
               timeout: int = 600) -> subprocess.CompletedProcess:
    """Run recipes/train.py: with plain python (one process), or with ``accelerate launch --config_file
    recipes/accelerate/<accelerate_config> --num_processes <processes>`` (an absolute path names another
    accelerate config); returns the finished process."""
    if accelerate_config is None:
        cmd = [sys.executable, str(TRAIN)]
    else:
        config_file = ACCELERATE / accelerate_config  # a name in recipes/accelerate/, or a path
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
               "--num_processes", str(processes), "--main_process_port", str(free_port())]
        if accelerate_config.startswith("deepspeed"):
            cmd += ["--mixed_precision", "no"]  # the shipped configs say bf16, for GPUs
        cmd.append(str(TRAIN))
    cmd += ["--config", str(config_path), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=launch_env(), cwd=str(REPO), timeout=timeout)


def check_ok(proc: subprocess.CompletedProcess) -> str:
    if proc.returncode != 0:
        raise AssertionError(f"recipe failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout


def summary(output_dir) -> dict:
    return json.loads((Path(output_dir) / "run_summary.json").read_text())


def log_history(output_dir) -> list[dict]:
    return json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
