"""Training throughput of recipes/train.py on 1 and 2 CPU processes, with and without sinks, in one run.

Four arms, each launched as the recipe is launched by users (plain python for one process,
``accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml`` for two), each process
with ``--threads`` torch threads (default 1, so the 2-process arms use twice the cores and the
2-vs-1 ratio is the data-parallel scaling; on a shared machine, several threads per process
make every step wait for the slowest thread and the numbers erratic):

    1 process, sinks      1 process, no sinks      2 processes, sinks      2 processes, no sinks

Every arm trains the pretrain_cpu model (4-layer GPT-2, hidden 128) on the embedded corpus with
the same global batch for ``--steps`` optimizer steps; probes, checkpoints and export are off,
so only training is timed. Throughput is the recipe's own measurement (``tokens_per_second`` in
its run summary: non-padding tokens over all processes, from the end of step 2 to the last
step). The arms run in rotation, ``--repeats`` times, so load on a shared machine hits all of
them alike, and the table shows medians and the ratios that matter: what sinks cost in each
launch, and what the second process gains.

    python benchmarks/recipe_throughput.py [--steps 40] [--repeats 2] [--batch 32] [--threads 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "recipes" / "train.py"
CONFIG = REPO / "recipes" / "configs" / "pretrain_cpu.yaml"
ARMS = [(1, True), (1, False), (2, True), (2, False)]  # (processes, sinks)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_arm(processes: int, sinks: bool, args, workdir: Path, index: int) -> dict:
    """Launch the recipe once; returns its run summary."""
    out = workdir / f"run{index}-{processes}p-{'sinks' if sinks else 'plain'}"
    overrides = ["--training.output_dir", str(out), "--training.max_steps", str(args.steps), "--training.save_strategy",
                 "no", "--training.logging_steps", str(args.steps), "--global_batch_size", str(args.batch),
                 "--probes.enabled", "false", "--export.enabled", "false", "--sinks.enabled", str(sinks).lower(),
                 "--sinks.audit_routing", "false"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "ACCELERATE_USE_CPU")}
    env.update({"OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if processes == 1:
        cmd = [sys.executable, str(TRAIN)]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "recipes" / "accelerate" / "cpu_2proc.yaml"), "--num_processes", str(processes),
               "--main_process_port", str(free_port()), str(TRAIN)]
    proc = subprocess.run(cmd + ["--config", str(CONFIG), *overrides], capture_output=True, text=True, env=env,
                          cwd=str(REPO))
    if proc.returncode != 0:
        raise RuntimeError(f"arm {processes}p sinks={sinks} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    summary = json.loads((out / "run_summary.json").read_text())
    if summary["world_size"] != processes:
        raise RuntimeError(f"asked for {processes} processes, the recipe ran {summary['world_size']}")
    return summary


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per arm (2 of them warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the four arms")
    parser.add_argument("--batch", type=int, default=32, help="global batch (rows per optimizer step)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--json", help="also write the numbers as JSON")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rates: dict[tuple[int, bool], list[float]] = {arm: [] for arm in ARMS}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="memsinks-throughput-") as tmp:
        for r in range(args.repeats):
            for i, (processes, sinks) in enumerate(ARMS):
                summary = run_arm(processes, sinks, args, Path(tmp), r * len(ARMS) + i)
                rates[(processes, sinks)].append(summary["tokens_per_second"])
    load_after = os.getloadavg()
    median = {arm: statistics.median(v) for arm, v in rates.items()}

    lines = [f"machine: {machine()}",
             f"load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f}; "
             f"{args.repeats} rounds of 4 arms, {args.steps} steps each, global batch {args.batch}, "
             f"{args.threads} thread(s) per process, "
             f"{time.time() - started:.0f} s in all",
             "",
             "processes | sinks | tokens/s (median) | runs                 | sinks / no sinks",
             "----------+-------+-------------------+----------------------+-----------------"]
    for processes, sinks in ARMS:
        runs = ", ".join(f"{v:,.0f}" for v in rates[(processes, sinks)])
        ratio = f"{median[(processes, True)] / median[(processes, False)]:.3f}x" if sinks else ""
        lines.append(f"{processes:>9} | {'yes' if sinks else 'no':>5} | {median[(processes, sinks)]:>17,.0f} | "
                     f"{runs:<20} | {ratio}")
    lines.append("")
    for sinks in (True, False):
        lines.append(f"2 processes / 1 process, {'with' if sinks else 'without'} sinks: "
                     f"{median[(2, sinks)] / median[(1, sinks)]:.3f}x")
    print("\n".join(lines))
    if args.json:
        payload = {"machine": machine(), "load_before": load_before, "load_after": load_after, "steps": args.steps,
                   "threads_per_process": args.threads,
                   "batch": args.batch, "repeats": args.repeats,
                   "tokens_per_second": {f"{p}p-{'sinks' if s else 'plain'}": v for (p, s), v in rates.items()}}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
