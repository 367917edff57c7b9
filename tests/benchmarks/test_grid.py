"""Settings on the command line: numbers, booleans and names, every combination for the sweep, one value each
for the benchmark."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import memorization  # noqa: E402
from memorization_lib import grid as grids  # noqa: E402


def test_grid_values_parse_to_the_types_sinks_config_checks():
    grid = grids.parse_grid("p_mem=0.05,0.3 sink_warmup_steps=0,50 centered_masks=true,False hash_scheme=x")
    assert grid == {"p_mem": [0.05, 0.3], "sink_warmup_steps": [0, 50], "centered_masks": [True, False],
                    "hash_scheme": ["x"]}
    assert all(isinstance(v, bool) for v in grid["centered_masks"])
    assert all(type(v) is int for v in grid["sink_warmup_steps"])
    assert len(grids.combos(grid)) == 8


def test_a_grid_item_without_values_is_named():
    with pytest.raises(ValueError, match="'p_mem' is not key=v1,v2"):
        grids.parse_grid("p_mem")


def test_the_benchmark_takes_one_value_per_sinks_field(capsys):
    args = memorization.parse_args(["--out", "x", "--s1-sinks", "sink_warmup_steps=100 centered_masks=true"])
    assert args.s1_sinks == {"sink_warmup_steps": 100, "centered_masks": True}
    with pytest.raises(SystemExit):
        memorization.parse_args(["--out", "x", "--s1-sinks", "p_mem=0.05,0.1"])
    assert "one value per field" in capsys.readouterr().err
    args = memorization.parse_args(["--out", "x", "--s2-sinks", "sink_lr_scale=2"])
    assert args.s2_sinks == {"sink_lr_scale": 2} and args.s1_sinks == {}
    with pytest.raises(SystemExit):
        memorization.parse_args(["--out", "x", "--s2-sinks", "sink_lr_scale=2,4"])
    assert "--s2-sinks takes one value per field" in capsys.readouterr().err


def test_seeds_start_at_first_seed_so_settings_can_be_chosen_apart_from_the_benchmarks_seeds(capsys):
    args = memorization.parse_args(["--out", "x", "--seeds", "2", "--first-seed", "100"])
    assert (args.seeds, args.first_seed) == (2, 100)
    assert memorization.parse_args(["--out", "x"]).first_seed == 0
    with pytest.raises(SystemExit):
        memorization.parse_args(["--out", "x", "--first-seed", "-1"])
    assert "--first-seed must be 0 or more; got -1" in capsys.readouterr().err


def test_the_sweep_sets_the_chosen_scenarios_fields_and_refuses_another_scenarios_by_name(tmp_path, capsys):
    import memorization_sweep
    from memorization_lib.settings import Scenario1Settings, Scenario3Settings

    s = memorization_sweep.settings_for({"n_domain": 32, "repeats": 64, "n_embd": 64}, Scenario3Settings())
    assert (s.n_domain, s.repeats, s.model.n_embd, s.model.intermediate) == (32, 64, 64, 1024)
    assert memorization_sweep.settings_for({"repeats": 8}, Scenario1Settings()).repeats == 8
    with pytest.raises(SystemExit):  # n_repeated is scenario 1's; refused before anything is trained
        memorization_sweep.main(["--scenario", "3", "--out", str(tmp_path), "--setup", "repeats=8 n_repeated=4"])
    assert "Unknown setup field(s) ['n_repeated']" in capsys.readouterr().err
    assert not (tmp_path / "sweep.json").exists()
