"""Running the benchmark's (scenario, seed) tasks one after another or in worker processes.

Each scenario's seeds are independent runs: ``ScenarioRun.run_seed(seed)`` trains and measures
every arm of one seed and returns a picklable dict; ``finish(per_seed)`` summarises the seeds in
order and draws the plots. With ``jobs`` > 1 all tasks of all scenarios go to one pool of forked
worker processes, each with ``threads`` torch threads, so that a 2-core machine runs two small
models side by side instead of one model on two threads (small matmuls use a second thread
poorly). Workers are forked, so the closures and what the parent prepared (tokenizers, a
pretrained base model) reach them without pickling; only the results travel back. Each task's
wall seconds are kept so a scenario can report the time its own tasks took.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class ScenarioRun:
    """One scenario's seeds: ``run_seed(seed) -> dict`` per seed, then ``finish(per_seed, seconds)``."""

    key: str
    title: str
    arms: list[str]
    run_seed: Callable[[int], dict]
    finish: Callable[[list[dict], float], None]


_TASKS: list[Callable[[], dict]] = []


def _timed(task: Callable[[], dict]) -> tuple[dict, float]:
    start = time.perf_counter()
    out = task()
    return out, time.perf_counter() - start


def _run_task(index: int) -> tuple[dict, float]:
    """In a worker: the task the parent registered before forking."""
    return _timed(_TASKS[index])


def run_all(runs: list[ScenarioRun], seeds: list[int], jobs: int, threads: int) -> None:
    """Run every (scenario, seed) task, ``jobs`` at a time, then finish each scenario with its seeds in order.

    A scenario's ``seconds`` is the sum of its tasks' wall seconds (with several jobs they overlap other
    scenarios' tasks, so these add up to more than the run's wall time)."""
    if jobs == 1:
        for run in runs:
            print(f"{run.title}: {len(seeds)} seed(s); arms {', '.join(run.arms)}", flush=True)
            mine = [_timed(lambda seed=seed: run.run_seed(seed)) for seed in seeds]
            run.finish([out for out, _ in mine], sum(seconds for _, seconds in mine))
        return
    for run in runs:
        print(f"{run.title}: {len(seeds)} seed(s); arms {', '.join(run.arms)}", flush=True)
    tasks = [(i, seed) for i, run in enumerate(runs) for seed in seeds]
    _TASKS[:] = [(lambda run=runs[i], seed=seed: run.run_seed(seed)) for i, seed in tasks]
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=torch.set_num_threads,
                                 initargs=(threads,)) as pool:
            outputs = list(pool.map(_run_task, range(len(tasks))))
    finally:
        _TASKS.clear()
    for i, run in enumerate(runs):
        mine = [out for (j, _), out in zip(tasks, outputs) if j == i]
        run.finish([out for out, _ in mine], sum(seconds for _, seconds in mine))
