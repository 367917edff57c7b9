"""How much memorization memsinks removes, what it costs, and how it compares with the alternatives.

    python benchmarks/memorization.py [--quick] [--text FILE] [--seeds 3] [--first-seed 0] [--jobs 1] --out DIR
                                      [--scenarios 1,1n,2,3,3n] [--base-model DIR] [--s2-arms a,b,...]
                                      [--s1-sinks "k=v ..."] [--s2-sinks "k=v ..."]

Scenario 1 trains a small GPT-2 from scratch on windows of a text (``--text``; the embedded
demo generator without it), with some windows and canaries repeated, once per arm: standard,
dedup, goldfish loss, DP-SGD (ε=8) and memorization sinks (measured with sinks dropped, in
each sequence's own sinks, and at their mean). Scenario 2 pretrains a small Llama (or loads
``--base-model``) and fine-tunes it on records carrying personal data repeated 1 to 32 times,
with full fine-tuning, dedup, goldfish, DP-SGD, append-placement sinks and LoRA on q/k vs v/o.
Scenario 3 trains from scratch on the text's unique windows mixed with a second domain
(templated children's stories) present only as a few hundred sequences repeated many times,
with the arms of scenario 1 plus near-duplicate dedup (MinHash LSH). ``1n`` and ``3n`` are
scenarios 1 and 3 with near-duplicate copies instead of exact repeats, with exact and MinHash
dedup and memsinks under each choice of sequence ID.

Writes into DIR: ``results.json`` (means over seeds with ``<field>_std`` siblings, the config,
the machine, and plain statements of whether each target is met), ``results.md`` (tables) and
PNG plots (memorization vs held-out loss per arm; training curves per arm). ``--quick`` is a
smoke run of a couple of minutes; the numbers it gives are not the science. ``--jobs 2`` runs
the (scenario, seed) tasks two at a time in forked worker processes of one torch thread each,
which on 2 cores is faster than one process on two threads (the models are small).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from memorization_lib import report, scenario1, scenario2, scenario3  # noqa: E402
from memorization_lib.data import load_text, scenario1_tokenizer  # noqa: E402
from memorization_lib.grid import parse_grid  # noqa: E402
from memorization_lib.jobs import ScenarioRun, run_all  # noqa: E402
from memorization_lib.markdown import markdown_report  # noqa: E402
from memorization_lib.mixture import general_text, scenario3_tokenizer  # noqa: E402
from memorization_lib.plots import plot_curves, plot_tradeoff  # noqa: E402
from memorization_lib.settings import Scenario1Settings, Scenario2Settings, Scenario3Settings, to_dict  # noqa: E402

SCENARIOS = ("1", "1n", "2", "3", "3n")  # 1n, 3n: scenarios 1 and 3 with near-duplicate copies


def machine_description(threads: int, jobs: int = 1) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    workers = f" in each of {jobs} worker processes" if jobs > 1 else ""
    kernels = torch.backends.cpu.get_cpu_capability()  # the vector kernels torch chose: rounding depends on them
    return (f"{cpu}; {os.cpu_count()} logical CPUs, torch {torch.__version__} with {threads} threads{workers} "
            f"({kernels} kernels); "
            f"{device}; {platform.system()} {platform.release()}, Python {platform.python_version()}; "
            f"load average at start {load}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small smoke run (minutes); not the science")
    p.add_argument("--text", help="text file to train on (default: the embedded demo generator)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; 1 with --quick)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds run from this one up (default 0: the benchmark's seeds 0, 1, 2; choose settings on "
                        "seeds of 100 and up, apart from them)")
    p.add_argument("--out", required=True, help="folder to write results.json, results.md and the plots into")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help="which scenarios to run, comma-separated from 1, 1n, 2, 3, 3n (1n, 3n: the near-duplicate "
                        "variants of 1 and 3); default all")
    p.add_argument("--base-model", help="scenario 2: fine-tune this pretrained model (a transformers folder, or one "
                                        "holding a single .gguf file) instead of pretraining a small one")
    p.add_argument("--s2-arms", help="scenario 2: only these arms (comma-separated, e.g. standard,memsinks,lora_vo_r4)")
    p.add_argument("--s1-sinks", default="",
                   help="scenarios 1 and 1n: SinksConfig values over the settings' sinks, e.g. "
                        "\"sink_warmup_steps=100 centered_masks=true\" (chosen with memorization_sweep.py)")
    p.add_argument("--s2-sinks", default="",
                   help="scenario 2: SinksConfig values over its settings' sinks, e.g. \"sink_lr_scale=2\"")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: min(2, CPUs), or 1 with --jobs > 1)")
    p.add_argument("--jobs", type=int, default=1,
                   help="(scenario, seed) tasks run at once in forked worker processes (default 1: one after another "
                        "in this process); on 2 cores, --jobs 2 runs two small models side by side")
    args = p.parse_args(argv)
    for flag in ("--s1-sinks", "--s2-sinks"):
        name = flag[2:].replace("-", "_")
        try:
            grid = parse_grid(getattr(args, name))
        except ValueError as err:
            p.error(f"{flag}: {err}")
        multi = [k for k, v in grid.items() if len(v) != 1]
        if multi:
            p.error(f"{flag} takes one value per field (a sweep is memorization_sweep.py's job); {multi} have several")
        setattr(args, name, {k: v[0] for k, v in grid.items()})
    scenarios = {x.strip() for x in args.scenarios.split(",") if x.strip()}
    if not scenarios or not scenarios <= set(SCENARIOS):
        p.error(f"--scenarios takes a comma-separated list from {', '.join(SCENARIOS)}; got {args.scenarios!r}")
    args.scenarios = [x for x in SCENARIOS if x in scenarios]
    if args.seeds is None:
        args.seeds = 1 if args.quick else 3
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1; got {args.jobs}")
    if args.first_seed < 0:
        p.error(f"--first-seed must be 0 or more; got {args.first_seed}")
    if args.text and not os.path.isfile(args.text):
        p.error(f"--text {args.text}: no such file")
    if args.base_model and not os.path.isdir(args.base_model):
        p.error(f"--base-model {args.base_model}: no such folder. Give a transformers checkpoint folder or one holding "
                "a single .gguf file.")
    return args


def _scratch_run(key: str, title: str, arms, run_seed, seeds: list[int], out: str, results: dict, *, targets=None,
                 findings_part: str | None = None, **heldout) -> ScenarioRun:
    """A from-scratch scenario (``run_seed(seed)`` per seed) whose finish writes ``results[key]``, with its targets
    (a function of the summary) or its near-duplicate findings on the corpus part ``findings_part``, and its plots."""

    def finish(per_seed: list[dict], seconds: float) -> None:
        summary = report.summarize_seeds(per_seed)
        if targets is not None:
            summary["targets"] = targets(summary)
        if findings_part is not None:
            summary["findings"] = report.near_duplicate_findings(summary, findings_part)
        summary["seconds"] = seconds
        results[key] = summary
        plot_tradeoff(summary["arms"], os.path.join(out, f"{key}_tradeoff.png"),
                      f"{title}: memorization vs held-out loss", **heldout)
        plot_curves(per_seed[0]["curves"], os.path.join(out, f"{key}_curves.png"),
                    f"{title}, training curves (seed {seeds[0]})")

    return ScenarioRun(key, title, list(arms), run_seed, finish)


def plan_scenario1(args, s1, seeds, results) -> list[ScenarioRun]:
    text, source = load_text(args.text, s1.max_chars)
    tok = scenario1_tokenizer(text, s1.vocab_size)
    print(f"scenarios 1, 1n: {source}", flush=True)
    runs = []
    if "1" in args.scenarios:
        runs.append(_scratch_run("scenario1", "Scenario 1 (from scratch)", scenario1.TRAINING_ARMS,
                                 lambda seed: scenario1.run_seed(text, source, tok, s1, seed), seeds, args.out,
                                 results, targets=report.targets))
    if "1n" in args.scenarios:
        runs.append(_scratch_run("scenario1_near_duplicates", "Scenario 1, near-duplicates", s1.near_duplicate_arms,
                                 lambda seed: scenario1.run_near_duplicates_seed(text, source, tok, s1, seed), seeds,
                                 args.out, results, findings_part="repeated"))
    return runs


def plan_scenario2(args, s2, seeds, results) -> list[ScenarioRun]:
    text, _ = load_text(args.text, s2.max_chars)
    base = scenario2.prepare_base(text, s2, seeds[0])

    def finish(per_seed: list[dict], seconds: float) -> None:
        summary = report.summarize_seeds(per_seed)
        summary["base"] = base["description"]
        summary["base_model_metrics"] = scenario2.evaluate_base(base, s2, seeds[0])
        summary["pretrain_seconds"] = base["pretrain_seconds"]
        top = str(max(s2.repeat_groups))
        summary["lora_findings"] = report.lora_findings(summary["arms"], s2.lora_ranks, top)
        summary["seconds"] = seconds + base["pretrain_seconds"]
        results["scenario2"] = summary
        plot_tradeoff(summary["arms"], os.path.join(args.out, "scenario2_tradeoff.png"),
                      f"Scenario 2 (fine-tuning): memorization of the x{top} records vs held-out loss")
        plot_curves(per_seed[0]["curves"], os.path.join(args.out, "scenario2_curves.png"),
                    f"Scenario 2 fine-tuning curves (seed {seeds[0]})")

    return [ScenarioRun("scenario2", "scenario 2", scenario2.training_arms(s2),
                        lambda seed: scenario2.run_seed(base, s2, seed), finish)]


def plan_scenario3(args, s3, seeds, results) -> list[ScenarioRun]:
    text, source = general_text(args.text, s3.max_chars)
    tok = scenario3_tokenizer(text, s3)
    domain = {"heldout": "domain_heldout_loss", "heldout_label": "held-out loss on the second domain"}
    print(f"scenarios 3, 3n: {source} mixed with repeated stories", flush=True)
    runs = []
    if "3" in args.scenarios:
        runs.append(_scratch_run("scenario3", "Scenario 3 (domain mixture)", scenario3.TRAINING_ARMS,
                                 lambda seed: scenario3.run_seed(text, source, tok, s3, seed), seeds, args.out,
                                 results, targets=report.scenario3_targets, **domain))
    if "3n" in args.scenarios:
        runs.append(_scratch_run("scenario3_near_duplicates", "Scenario 3, near-duplicates", s3.near_duplicate_arms,
                                 lambda seed: scenario3.run_near_duplicates_seed(text, source, tok, s3, seed), seeds,
                                 args.out, results, findings_part="domain", **domain))
    return runs


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = args.threads or (1 if args.jobs > 1 else max(1, min(2, os.cpu_count() or 1)))
    torch.set_num_threads(threads)
    os.makedirs(args.out, exist_ok=True)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    s1 = Scenario1Settings.quick() if args.quick else Scenario1Settings()
    s1.sinks = {**s1.sinks, **args.s1_sinks}
    s3 = Scenario3Settings.quick() if args.quick else Scenario3Settings()
    if args.base_model:
        s2 = Scenario2Settings.pretrained(args.base_model)
    else:
        s2 = Scenario2Settings.quick() if args.quick else Scenario2Settings()
    s2.sinks = {**s2.sinks, **args.s2_sinks}
    if args.s2_arms:
        s2.arms = tuple(a.strip() for a in args.s2_arms.split(",") if a.strip())
        scenario2.training_arms(s2)  # fails early on an unknown arm
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + sys.argv[1:])
    results: dict = {
        "config": {"command": command, "quick": args.quick, "seeds": seeds, "threads": threads, "jobs": args.jobs,
                   "text": args.text or "embedded demo generator", "scenarios": args.scenarios,
                   "std": "sample std over seeds (ddof=1); 0.0 with one seed",
                   "scenario1": to_dict(s1), "scenario2": to_dict(s2), "scenario3": to_dict(s3)},
        "machine": machine_description(threads, args.jobs),
    }
    started = time.perf_counter()
    runs = []
    if {"1", "1n"} & set(args.scenarios):
        runs += plan_scenario1(args, s1, seeds, results)
    if "2" in args.scenarios:
        runs += plan_scenario2(args, s2, seeds, results)
    if {"3", "3n"} & set(args.scenarios):
        runs += plan_scenario3(args, s3, seeds, results)
    run_all(runs, seeds, args.jobs, threads)
    results["seconds"] = time.perf_counter() - started
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    md = markdown_report(results)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(md + "\n")
    print(md)
    print(f"\nwrote {args.out}/results.json, results.md and plots in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
