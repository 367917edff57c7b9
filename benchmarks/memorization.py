"""How much memorization memsinks removes, what it costs, and how it compares with the alternatives.

    python benchmarks/memorization.py [--quick] [--text FILE] [--seeds 3] --out DIR
                                      [--scenarios 1,2] [--base-model DIR] [--s2-arms a,b,...]

Scenario 1 trains a small GPT-2 from scratch on windows of a text (``--text``; the embedded
demo generator without it), with some windows and canaries repeated, once per arm: standard,
dedup, goldfish loss, DP-SGD (ε=8) and memorization sinks (measured with sinks dropped, in
each sequence's own sinks, and at their mean). Scenario 2 pretrains a small Llama (or loads
``--base-model``) and fine-tunes it on records carrying personal data repeated 1 to 32 times,
with full fine-tuning, dedup, goldfish, DP-SGD, append-placement sinks and LoRA on q/k vs v/o.

Writes into DIR: ``results.json`` (means over seeds with ``<field>_std`` siblings, the config,
the machine, and plain statements of whether each target is met), ``results.md`` (tables) and
PNG plots (memorization vs held-out loss per arm; training curves per arm). ``--quick`` is a
smoke run of a few minutes; the numbers it gives are not the science.
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

from memorization_lib import report, scenario1, scenario2  # noqa: E402
from memorization_lib.data import load_text, scenario1_tokenizer  # noqa: E402
from memorization_lib.settings import Scenario1Settings, Scenario2Settings, to_dict  # noqa: E402


def machine_description(threads: int) -> str:
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
    return (f"{cpu}; {os.cpu_count()} logical CPUs, torch {torch.__version__} with {threads} threads; {device}; "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}; "
            f"load average at start {load}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small smoke run (minutes); not the science")
    p.add_argument("--text", help="text file to train on (default: the embedded demo generator)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; 1 with --quick)")
    p.add_argument("--out", required=True, help="folder to write results.json, results.md and the plots into")
    p.add_argument("--scenarios", default="1,2", help="which scenarios to run: 1, 2 or 1,2 (default)")
    p.add_argument("--base-model", help="scenario 2: fine-tune this pretrained model (a transformers folder, or one "
                                        "holding a single .gguf file) instead of pretraining a small one")
    p.add_argument("--s2-arms", help="scenario 2: only these arms (comma-separated, e.g. standard,memsinks,lora_vo_r4)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: min(2, CPUs))")
    args = p.parse_args(argv)
    scenarios = {x.strip() for x in args.scenarios.split(",") if x.strip()}
    if not scenarios or not scenarios <= {"1", "2"}:
        p.error(f"--scenarios takes 1, 2 or 1,2; got {args.scenarios!r}")
    args.scenarios = sorted(scenarios)
    if args.seeds is None:
        args.seeds = 1 if args.quick else 3
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if args.text and not os.path.isfile(args.text):
        p.error(f"--text {args.text}: no such file")
    if args.base_model and not os.path.isdir(args.base_model):
        p.error(f"--base-model {args.base_model}: no such folder. Give a transformers checkpoint folder or one holding "
                "a single .gguf file.")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = args.threads or max(1, min(2, os.cpu_count() or 1))
    torch.set_num_threads(threads)
    os.makedirs(args.out, exist_ok=True)
    seeds = list(range(args.seeds))
    s1 = Scenario1Settings.quick() if args.quick else Scenario1Settings()
    if args.base_model:
        s2 = Scenario2Settings.pretrained(args.base_model)
    else:
        s2 = Scenario2Settings.quick() if args.quick else Scenario2Settings()
    if args.s2_arms:
        s2.arms = tuple(a.strip() for a in args.s2_arms.split(",") if a.strip())
        scenario2.training_arms(s2)  # fails early on an unknown arm
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + sys.argv[1:])
    results: dict = {
        "config": {"command": command, "quick": args.quick, "seeds": seeds, "threads": threads,
                   "text": args.text or "embedded demo generator", "scenarios": args.scenarios,
                   "std": "sample std over seeds (ddof=1); 0.0 with one seed",
                   "scenario1": to_dict(s1), "scenario2": to_dict(s2)},
        "machine": machine_description(threads),
    }
    started = time.perf_counter()

    if "1" in args.scenarios:
        text, source = load_text(args.text, s1.max_chars)
        tok = scenario1_tokenizer(text, s1.vocab_size)
        print(f"scenario 1: {source}; {len(seeds)} seed(s); arms {', '.join(scenario1.TRAINING_ARMS)}", flush=True)
        per_seed = [scenario1.run_seed(text, source, tok, s1, seed)
                    for seed in seeds]
        summary = report.summarize_seeds(per_seed)
        summary["targets"] = report.targets(summary)
        summary["seconds"] = time.perf_counter() - started
        results["scenario1"] = summary
        report.plot_tradeoff(summary["arms"], os.path.join(args.out, "scenario1_tradeoff.png"),
                             "Scenario 1 (from scratch): memorization vs held-out loss")
        report.plot_curves(per_seed[0]["curves"], os.path.join(args.out, "scenario1_curves.png"),
                           f"Scenario 1 training curves (seed {seeds[0]})")

    if "2" in args.scenarios:
        t2 = time.perf_counter()
        text, _ = load_text(args.text, s2.max_chars)
        base = scenario2.prepare_base(text, s2, seeds[0])
        print(f"scenario 2: {len(seeds)} seed(s); arms {', '.join(scenario2.training_arms(s2))}", flush=True)
        per_seed = [scenario2.run_seed(base, s2, seed) for seed in seeds]
        summary = report.summarize_seeds(per_seed)
        summary["base"] = base["description"]
        summary["base_model_metrics"] = scenario2.evaluate_base(base, s2, seeds[0])
        summary["pretrain_seconds"] = base["pretrain_seconds"]
        top = str(max(s2.repeat_groups))
        summary["lora_findings"] = report.lora_findings(summary["arms"], s2.lora_ranks, top)
        summary["seconds"] = time.perf_counter() - t2
        results["scenario2"] = summary
        report.plot_tradeoff(summary["arms"], os.path.join(args.out, "scenario2_tradeoff.png"),
                             f"Scenario 2 (fine-tuning): memorization of the x{top} records vs held-out loss")
        report.plot_curves(per_seed[0]["curves"], os.path.join(args.out, "scenario2_curves.png"),
                           f"Scenario 2 fine-tuning curves (seed {seeds[0]})")

    results["seconds"] = time.perf_counter() - started
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    md = report.markdown_report(results)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(md + "\n")
    print(md)
    print(f"\nwrote {args.out}/results.json, results.md and plots in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
