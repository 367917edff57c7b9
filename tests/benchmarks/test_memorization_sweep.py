"""The sweep's grid syntax: numbers, booleans and names, and every combination of them."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import memorization_sweep  # noqa: E402


def test_grid_values_parse_to_the_types_sinks_config_checks():
    grid = memorization_sweep.parse_grid("p_mem=0.05,0.3 sink_warmup_steps=0,50 centered_masks=true,False hash_scheme=x")
    assert grid == {"p_mem": [0.05, 0.3], "sink_warmup_steps": [0, 50], "centered_masks": [True, False],
                    "hash_scheme": ["x"]}
    assert all(isinstance(v, bool) for v in grid["centered_masks"])
    assert all(type(v) is int for v in grid["sink_warmup_steps"])
    assert len(memorization_sweep.combos(grid)) == 8


def test_a_grid_item_without_values_is_named():
    with pytest.raises(ValueError, match="'p_mem' is not key=v1,v2"):
        memorization_sweep.parse_grid("p_mem")
