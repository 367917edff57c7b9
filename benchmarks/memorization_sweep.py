"""Why memsinks closes the share of the gap it closes: a sweep over the method's and the setup's knobs.

    python benchmarks/memorization_sweep.py --text FILE --out DIR [--scenario 1|3] \
        [--grid "p_gen=0.5,0.7 p_mem=0.1,0.3"] [--setup "repeats=32 n_embd=128"] [--seeds 100]

For every combination of the setup values (model shape, repetitions, learning rate, epochs:
fields of ``Scenario1Settings`` or ``Scenario3Settings`` and ``DecoderShape``) the ``standard``
arm is trained once; for every combination of the sinks values (``SinksConfig`` fields such as
``p_gen`` and ``p_mem``, over the settings' ``sinks``) on top of it, the ``memsinks`` arm. Only
losses are measured (sinks dropped / own / mean), which is what the gap-closed share and the
held-out cost need: scenario 1's repeated and held-out windows; scenario 3's repeated stories,
held-out stories (the gap's other side and the domain's held-out cost) and held-out windows of
the general text (its ``general`` cost).

The sweep draws its repeated and held-out windows with its own seeds (default 100, apart from
the benchmark's 0, 1, 2), so that choosing settings from it does not fit them to the
benchmark's evaluation sets. Writes ``sweep.json`` (one row per run) and ``sweep.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import memsinks  # noqa: E402
from memorization_lib.data import build_scenario1, load_text, scenario1_tokenizer  # noqa: E402
from memorization_lib.grid import combos, parse_grid  # noqa: E402
from memorization_lib.mixture import build_scenario3, general_text, scenario3_tokenizer  # noqa: E402
from memorization_lib.scenario1 import scenario1_model  # noqa: E402
from memorization_lib.settings import Scenario1Settings, Scenario3Settings  # noqa: E402
from memorization_lib.training import steps_for, train_arm  # noqa: E402
from memsinks._memorization_corpus import training_dataset  # noqa: E402
from memsinks._small_decoder import DecoderShape  # noqa: E402
from memsinks.probes import sequence_losses  # noqa: E402

SINK_KEYS = {f.name for f in dataclasses.fields(memsinks.SinksConfig)}
SHAPE_KEYS = {f.name for f in dataclasses.fields(DecoderShape)}


@dataclass(frozen=True)
class SweepScenario:
    """What the sweep needs of a scenario: its settings, how to load its text and tokenizer, build one seed's
    data, the sequences it scores (``heldout`` is the gap's other side) and the training stream."""

    settings: type
    load: Callable  # (path, settings) -> (text, source, tokenizer)
    build: Callable  # (text, source, tokenizer, settings, seed) -> data
    tokenizer: Callable  # data -> tokenizer
    scored: Callable  # data -> {name: token rows}
    stream: Callable  # (data, settings) -> sources


def _load_scenario1(path, s):
    text, source = load_text(path, s.max_chars)
    return text, source, scenario1_tokenizer(text, s.vocab_size)


def _load_scenario3(path, s):
    text, source = general_text(path, s.max_chars)
    return text, source, scenario3_tokenizer(text, s)


SCENARIOS = {
    # repeated and held-out windows of one text
    "1": SweepScenario(Scenario1Settings, _load_scenario1, build_scenario1, lambda d: d.corpus.tokenizer,
                       lambda d: {"repeated": d.corpus.repeated, "heldout": d.corpus.heldout},
                       lambda d, s: d.sources(s.repeats, s.repeats)),
    # repeated stories against held-out stories, and held-out windows of the general text
    "3": SweepScenario(Scenario3Settings, _load_scenario3, build_scenario3, lambda d: d.tokenizer,
                       lambda d: {"repeated": d.repeated_eval, "heldout": d.domain_heldout,
                                  "general": d.general_heldout},
                       lambda d, s: d.sources(s.repeats)),
}


def settings_for(setup: dict, base):
    shape = dataclasses.replace(base.model, **{k: v for k, v in setup.items() if k in SHAPE_KEYS})
    rest = {k: v for k, v in setup.items() if k not in SHAPE_KEYS}
    unknown = set(rest) - {f.name for f in dataclasses.fields(type(base))}
    if unknown:
        raise ValueError(f"Unknown setup field(s) {sorted(unknown)}.")
    return dataclasses.replace(base, model=shape, **rest)


def losses(model, scenario, data, mode) -> dict:
    pad = scenario.tokenizer(data).pad_token_id
    out = {}
    with memsinks.sinks_mode(model, mode):
        for name, seqs in scenario.scored(data).items():
            ids = [memsinks.content_id(s) for s in seqs] if mode == "own" else None
            out[name] = float(np.mean(sequence_losses(model, seqs, ids, pad_token_id=pad)))
    return out


def train(scenario, s, data, seed, sinks: dict | None) -> tuple[dict, float]:
    tok = scenario.tokenizer(data)
    model = scenario1_model(s, tok, seed, sinks is not None, sinks)
    stream = scenario.stream(data, s)
    ds = training_dataset(stream, seed, with_ids=sinks is not None)
    with tempfile.TemporaryDirectory() as tmp:
        run = train_arm(model, tok, ds, output_dir=tmp, max_steps=steps_for(stream, s.epochs, s.batch_size),
                        batch_size=s.batch_size, learning_rate=s.learning_rate, seed=seed)
    modes = ("drop", "own", "mean") if sinks is not None else (None,)
    return {m or "plain": losses(model, scenario, data, m) for m in modes}, run.seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="1",
                   help="1: windows of one text, some repeated (default); 3: a general text and a domain seen only "
                        "as repeated stories (the gap is against held-out stories; also reports the general text)")
    p.add_argument("--out", required=True)
    p.add_argument("--grid", default="p_gen=0.5 p_mem=0.3",
                   help="sinks values to sweep (SinksConfig fields, e.g. p_gen, p_mem), over the settings' sinks")
    p.add_argument("--setup", default="", help="setup values to sweep (fields of the scenario's settings, e.g. "
                                               "Scenario3Settings' n_domain and repeats, or DecoderShape's)")
    p.add_argument("--seeds", default="100", help="comma-separated seeds (default 100: apart from the benchmark's)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads or max(1, min(2, os.cpu_count() or 1)))
    os.makedirs(args.out, exist_ok=True)
    sink_grid = parse_grid(args.grid)
    if set(sink_grid) - SINK_KEYS:
        p.error(f"--grid takes SinksConfig fields {sorted(SINK_KEYS)}; put other fields in --setup")
    scenario = SCENARIOS[args.scenario]
    base = scenario.settings()
    seeds = [int(x) for x in args.seeds.split(",")]
    rows = []
    path = os.path.join(args.out, "sweep.json")
    try:  # every setup checked before anything is trained
        setups = [(setup, settings_for(setup, base)) for setup in combos(parse_grid(args.setup))]
    except (TypeError, ValueError) as err:
        p.error(f"--setup {args.setup!r}: {err}")
    for setup, s in setups:
        text, source, tok = scenario.load(args.text, s)
        for seed in seeds:
            data = scenario.build(text, source, tok, s, seed)
            std, secs = train(scenario, s, data, seed, None)
            std = std["plain"]
            print(f"{setup} seed {seed}: standard held-out {std['heldout']:.3f} repeated {std['repeated']:.3f} "
                  f"({secs:.0f} s)", flush=True)
            for sinks in combos(sink_grid):
                sinks = {**s.sinks, **sinks}
                start = time.perf_counter()
                ms, secs = train(scenario, s, data, seed, sinks)
                std_gap = std["heldout"] - std["repeated"]
                row = {"scenario": args.scenario, "setup": setup, "sinks": sinks, "seed": seed, "standard": std,
                       "memsinks": ms,
                       "settings": {"intermediate": s.model.intermediate, "n_layer": s.model.n_layer,
                                    "n_embd": s.model.n_embd, "epochs": s.epochs, "repeats": s.repeats,
                                    "max_chars": s.max_chars, "learning_rate": s.learning_rate},
                       "gap_closed": 1 - (ms["drop"]["heldout"] - ms["drop"]["repeated"]) / std_gap,
                       "sink_gap_closed": (ms["drop"]["repeated"] - ms["own"]["repeated"])
                       / (ms["own"]["heldout"] - ms["own"]["repeated"]),
                       "heldout_ratio_drop": ms["drop"]["heldout"] / std["heldout"],
                       "heldout_ratio_mean": ms["mean"]["heldout"] / std["heldout"],
                       "gap_closed_mean_mode": 1 - (ms["mean"]["heldout"] - ms["mean"]["repeated"]) / std_gap,
                       "train_seconds": secs}
                if "general" in std:
                    row["general_ratio_drop"] = ms["drop"]["general"] / std["general"]
                rows.append(row)
                print(f"  {sinks}: gap closed {100 * row['gap_closed']:.0f}% (own-mode {100 * row['sink_gap_closed']:.0f}%),"
                      f" held-out drop/standard {row['heldout_ratio_drop']:.3f}, mean-mode {row['heldout_ratio_mean']:.3f}"
                      f" closing {100 * row['gap_closed_mean_mode']:.0f}%"
                      + (f", general drop/standard {row['general_ratio_drop']:.3f}" if "general_ratio_drop" in row else "")
                      + f" ({time.perf_counter() - start:.0f} s)", flush=True)
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(rows, f, indent=1)
    general = args.scenario == "3"
    lines = ["| setup | p_gen | p_mem | other sinks fields | seed | std held-out | std repeated | drop held-out | drop repeated | "
             "gap closed | held-out cost (drop) | mean held-out cost | mean closes |"
             + (" general cost (drop) |" if general else ""), "|" + "---|" * (14 if general else 13)]
    for r in rows:
        other = ", ".join(f"{k}={v}" for k, v in r["sinks"].items() if k not in ("placement", "p_gen", "p_mem")) or "-"
        lines.append(f"| {r['setup'] or 'default'} | {r['sinks']['p_gen']} | {r['sinks']['p_mem']} | {other} | {r['seed']} | "
                     f"{r['standard']['heldout']:.3f} | {r['standard']['repeated']:.3f} | "
                     f"{r['memsinks']['drop']['heldout']:.3f} | {r['memsinks']['drop']['repeated']:.3f} | "
                     f"{100 * r['gap_closed']:.0f}% | {100 * (r['heldout_ratio_drop'] - 1):+.1f}% | "
                     f"{100 * (r['heldout_ratio_mean'] - 1):+.1f}% | {100 * r['gap_closed_mean_mode']:.0f}% |"
                     + (f" {100 * (r['general_ratio_drop'] - 1):+.1f}% |" if general else ""))
    with open(os.path.join(args.out, "sweep.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
