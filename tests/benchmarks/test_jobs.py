"""The benchmark's task runner: the same per-seed results, in seed order, whether the (scenario, seed) tasks run one
after another here or side by side in forked workers, and each scenario finished with its own seeds."""

from __future__ import annotations

import os
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

from memorization_lib.jobs import ScenarioRun, run_all  # noqa: E402


def _runs(finished: dict, prepared: list[int]) -> list[ScenarioRun]:
    """Two scenarios whose seeds compute from something the parent prepared (a stand-in for a pretrained base)."""

    def finish_as(key):
        return lambda per_seed, seconds: finished.__setitem__(key, (per_seed, seconds))

    return [ScenarioRun(key, key, ["arm"], lambda seed, k=k: {"value": prepared[0] * k + seed, "pid": os.getpid()},
                        finish_as(key)) for k, key in ((10, "a"), (100, "b"))]


@pytest.mark.parametrize("jobs", [1, 2])
def test_every_scenario_gets_its_seeds_results_in_seed_order(jobs):
    finished: dict = {}
    prepared = [7]
    run_all(_runs(finished, prepared), [0, 1, 2], jobs=jobs, threads=1)
    assert [r["value"] for r in finished["a"][0]] == [70, 71, 72]
    assert [r["value"] for r in finished["b"][0]] == [700, 701, 702]
    assert all(seconds >= 0.0 for _, seconds in finished.values())
    pids = {r["pid"] for per_seed, _ in finished.values() for r in per_seed}
    assert (pids == {os.getpid()}) if jobs == 1 else (os.getpid() not in pids)


def test_the_benchmark_takes_one_job_or_more(capsys):
    import memorization

    assert memorization.parse_args(["--out", "x"]).jobs == 1
    assert memorization.parse_args(["--out", "x", "--jobs", "2"]).jobs == 2
    with pytest.raises(SystemExit):
        memorization.parse_args(["--out", "x", "--jobs", "0"])
    assert "--jobs must be at least 1; got 0" in capsys.readouterr().err
