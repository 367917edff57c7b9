"""Settings on the command line: "key=v1,v2 key2=v" grids for the sweep, single values for the benchmark."""

from __future__ import annotations

import itertools


def parse_grid(text: str) -> dict[str, list]:
    """ "a=1,2 b=x c=true" -> {"a": [1, 2], "b": ["x"], "c": [True]} (numbers as int or float, true/false as bools)."""
    grid = {}
    for item in text.split():
        key, _, values = item.partition("=")
        if not values:
            raise ValueError(f"Grid item {item!r} is not key=v1,v2,...")
        parsed = []
        for v in values.split(","):
            if v.lower() in ("true", "false"):
                parsed.append(v.lower() == "true")
                continue
            try:
                parsed.append(int(v))
            except ValueError:
                try:
                    parsed.append(float(v))
                except ValueError:
                    parsed.append(v)
        grid[key] = parsed
    return grid


def combos(grid: dict[str, list]) -> list[dict]:
    """Every combination of a grid's values, one dict each ([{}] for an empty grid)."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*[grid[k] for k in keys])] or [{}]
