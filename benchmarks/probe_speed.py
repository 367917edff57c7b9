"""Speed of the memorization probes, in one run.

1. Extraction over 256 sequences (32-token prompt, 32-token continuation) with the batched,
   left-padded, KV-cached ``generate()`` path against a one-sequence, no-cache greedy loop
   (target: at least 5x faster). Both must produce the same tokens; the script checks it.
2. The overhead of ``ProbeCallback`` at its default cadence (every 200 steps, at evaluations
   and at the end of training) in the ``memsinks demo`` training run (a 4-layer GPT-2 with
   sinks; target: at most 5% of training time). The demo run is the same with and without the
   callback; the time spent inside the callback is also measured directly, which is robust to
   other load on the machine, and projected to a long run (one probe per 200 steps).

    python benchmarks/probe_speed.py [--sequences 256] [--threads 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch

import memsinks
from memsinks._trainer_setup import sinks_trainer
from memsinks.callbacks import ProbeCallback
from memsinks.demo import DemoSettings, build_data, build_model, training_arguments
from memsinks.probes import extraction
from memsinks.probes.generation import greedy_continuations_uncached


def train(model, tok, ds, s: DemoSettings, out: str, callbacks: list) -> tuple[float, int]:
    """The demo's training run (``memsinks.demo.train_model``'s settings) with ``callbacks``; (seconds, steps)."""
    trainer = sinks_trainer(model, training_arguments(s, out), ds, tok, callbacks=callbacks)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start, trainer.state.global_step


class _Timed:
    """Wraps a callback's ``compute`` and adds up the seconds spent in it."""

    def __init__(self, fn):
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine may be shared)")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"probe_speed: torch {torch.__version__}, {device}, {torch.get_num_threads()} CPU threads, "
          f"{platform.processor() or platform.machine()}")

    s = DemoSettings()
    tok, ds, evals = build_data(s)
    long_enough = ds.filter(lambda row: len(row["input_ids"]) >= 64)
    members = long_enough  # training rows with their sequence_ids; the callback probes a fixed sample
    nonmembers = evals["heldout"]

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        plain_seconds, steps = train(build_model(s, len(tok), True), tok, ds, s, os.path.join(tmp, "a"), [])
        probe = ProbeCallback(tok, members=members, nonmembers=nonmembers)
        probe.compute = _Timed(probe.compute)
        model = build_model(s, len(tok), True)
        with_seconds, _ = train(model, tok, ds, s, os.path.join(tmp, "b"), [probe])
    step_seconds = (with_seconds - probe.compute.seconds) / steps
    repeats = []
    for _ in range(3):  # the same probe on the trained model again: its cost without training around it
        start = time.perf_counter()
        probe.compute.fn(model, None)
        repeats.append(time.perf_counter() - start)
    per_probe = float(np.median(repeats))
    results["callback"] = {
        "training_steps": steps,
        "train_seconds_without": plain_seconds,
        "train_seconds_with": with_seconds,
        "probe_runs": probe.compute.calls,
        "seconds_in_callback": probe.compute.seconds,
        "overhead_in_callback": probe.compute.seconds / (with_seconds - probe.compute.seconds),
        "overhead_wall_difference": with_seconds / plain_seconds - 1,
        "seconds_per_probe_median_of_3": per_probe,
        "overhead_steady_state_every_200_steps": per_probe / (200 * step_seconds),
    }
    c = results["callback"]
    print(f"\nProbeCallback at its default cadence in the demo run ({steps} steps; probes: {', '.join(probe.probes)}; "
          f"{len(probe.members)} member rows, {len(probe.nonmembers)} held-out stories):")
    print(f"  training {c['train_seconds_without']:.1f} s without, {c['train_seconds_with']:.1f} s with the callback "
          f"(wall difference {100 * c['overhead_wall_difference']:+.1f}%, includes machine noise)")
    print(f"  {c['probe_runs']} probe run(s), {c['seconds_in_callback']:.2f} s inside the callback = "
          f"{100 * c['overhead_in_callback']:.2f}% of training time  [target <= 5%]")
    print(f"  one probe run takes {per_probe:.2f} s (median of 3 more) = "
          f"{100 * c['overhead_steady_state_every_200_steps']:.2f}% of 200 training steps ({1000 * step_seconds:.0f} "
          "ms/step): the cost in a long run")

    rows = [list(r) for r in long_enough.select(range(min(args.sequences, len(long_enough))))["input_ids"]]
    model.eval()
    start = time.perf_counter()
    batched = extraction(model, rows, prefix_len=32, suffix_len=32, batch_size=32)
    batched_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with memsinks.sinks_mode(model, "drop"):
        looped = greedy_continuations_uncached(model, [r[:32] for r in rows], 32)
    loop_seconds = time.perf_counter() - start
    same = bool(np.array_equal(batched.per_example["generated"], looped))
    results["extraction"] = {
        "sequences": len(rows), "batched_kv_cache_seconds": batched_seconds, "loop_no_cache_seconds": loop_seconds,
        "speedup": loop_seconds / batched_seconds, "identical_tokens": same,
        "exact_match": batched.exact_match,
    }
    e = results["extraction"]
    print(f"\nExtraction of {e['sequences']} sequences (32 + 32 tokens) on the trained demo model:")
    print(f"  batched + KV cache (batch 32): {batched_seconds:.2f} s; one sequence, no cache: {loop_seconds:.2f} s")
    print(f"  speedup {e['speedup']:.1f}x  [target >= 5x]; identical tokens: {same}; "
          f"exact-match rate {e['exact_match']:.3f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
