"""A stronger attacker on the memorization benchmark's scenario-1 models: dynamic soft prompting (DSP).

    python benchmarks/dsp_extraction.py [--quick] [--text FILE] [--seed 0] [--threads 2]
                                        [--out benchmarks/results/dsp]

Greedy prefix-to-suffix extraction underestimates memorization (Wang et al. 2024, "Unlocking
Memorization in Large Language Models with Dynamic Soft Prompting", arXiv 2409.13853). This
script trains scenario 1's ``standard`` and ``memsinks`` arms for one seed exactly as
``benchmarks/memorization.py`` does (same settings, data, model shape, Trainer and step budget,
from ``memorization_lib``), then attacks each with ``memsinks.probes.dsp.dsp_extraction``:

- the attacker knows ``--n-attack`` (prefix, suffix) pairs drawn from the *unique* training
  windows (seen ``epochs`` times in training) and trains a static soft prompt and a DSP
  generator on them; the target model stays frozen;
- extraction is scored on the *repeated* windows (the memorized set the benchmark measures),
  which are disjoint from the attacker's pairs (asserted on content IDs); the held-out windows,
  never trained on, are decoded alongside as a control for what the prompts gain without
  memorization;
- the memsinks model is attacked as shipped (sinks ``drop``) and, for reference, in each
  sequence's own sinks (``own``, IDs given: not something a real attacker can do);
- each attack runs twice, once per ``DSPConfig.prompt_positions``: ``shifted`` (the paper's
  attack: the prepended prompts move the prefix to positions m..) and ``overlap`` (the prefix
  and suffix keep their training positions from 0), since these models only ever saw windows
  that start at position 0.

Each attack reports no-prompt (the plain greedy probe), static-prompt and DSP extraction
(exact match, token accuracy, longest common n-gram as a share of the suffix). Writes
``results.json`` and ``results.md`` into ``--out``. ``--quick`` is a smoke run (well under a
minute); its numbers are not the science.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import sys
import time
from dataclasses import asdict, replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import memsinks  # noqa: E402
from memorization_lib.data import build_scenario1, load_text, scenario1_tokenizer  # noqa: E402
from memorization_lib.scenario1 import scenario1_model  # noqa: E402
from memorization_lib.settings import Scenario1Settings, to_dict  # noqa: E402
from memorization_lib.training import steps_for, train_scenario_arm  # noqa: E402
from memsinks._memorization_corpus import stream_rows  # noqa: E402
from memsinks._small_decoder import DecoderShape  # noqa: E402
from memsinks.probes.dsp import DSPConfig, dsp_extraction  # noqa: E402
from memsinks.probes.extraction import ExtractionResult  # noqa: E402

KINDS = ("no_prompt", "static", "dsp")
ROWS = KINDS + ("overlap_static", "overlap_dsp")
LABELS = {"no_prompt": "no prompt", "static": "static (shifted)", "dsp": "DSP (shifted)",
          "overlap_static": "static (overlap)", "overlap_dsp": "DSP (overlap)"}
METRICS = ("exact_match", "token_accuracy", "ngram_share")


def quick_settings() -> Scenario1Settings:
    """Scenario 1's quick settings, smaller still: a smoke run of the whole pipeline."""
    s = Scenario1Settings.quick()
    s.max_chars, s.n_repeated, s.n_heldout, s.epochs = 30_000, 4, 8, 1.0
    s.model = DecoderShape(n_layer=1, n_embd=32, n_head=2, intermediate=64)
    return s


def split_attack_eval(data, n_attack: int, seed: int) -> dict:
    """Attacker pairs (unique training windows), evaluation windows (repeated) and the control (held-out).

    Returns token lists and content IDs per set; raises unless the three sets are pairwise disjoint.
    """
    repeated, heldout = data.corpus.repeated, data.corpus.heldout
    excluded = {memsinks.content_id(w) for w in repeated + heldout}
    pool = [w for w in data.corpus.train if memsinks.content_id(w) not in excluded]
    attack = random.Random(seed).sample(pool, min(n_attack, len(pool)))
    sets = {"attack": attack, "repeated": repeated, "heldout": heldout}
    ids = {k: [memsinks.content_id(w) for w in v] for k, v in sets.items()}
    assert not set(ids["attack"]) & set(ids["repeated"]), "attack and evaluation pairs overlap"
    assert not set(ids["attack"]) & set(ids["heldout"]), "attack and held-out control pairs overlap"
    assert not set(ids["repeated"]) & set(ids["heldout"]), "evaluation and held-out control windows overlap"
    return {"sequences": sets, "ids": ids}


def train_scenario1_arm(arm: str, data, tokenizer, s: Scenario1Settings, seed: int):
    """One scenario-1 arm (``standard`` or ``memsinks``) trained as ``memorization_lib.scenario1.run_seed`` does."""
    stream = data.sources(s.repeats, s.repeats)
    max_steps = steps_for(stream, s.epochs, s.batch_size)
    with_sinks = arm == "memsinks"
    model = scenario1_model(s, tokenizer, seed, with_sinks)
    run = train_scenario_arm(arm, model, tokenizer, stream, stream, {}, s, seed=seed, max_steps=max_steps,
                             learning_rate=s.learning_rate, with_sinks=with_sinks)
    model.eval()
    return model, {"steps": run.steps, "tokens": run.tokens, "train_seconds": round(run.seconds, 1)}


def subset(result: ExtractionResult, idx: slice) -> dict:
    """The three extraction rates over a slice of the evaluated sequences."""
    per = {k: v[idx] for k, v in result.per_example.items()}
    return {m: float(getattr(ExtractionResult.from_per_example(per, result.prefix_len, result.suffix_len), m))
            for m in METRICS}


def attack(model, mode: str | None, split: dict, s: Scenario1Settings, cfg: DSPConfig) -> dict:
    """No-prompt, static and DSP extraction on the repeated windows (and the held-out control).

    Two runs of ``dsp_extraction``: prompt positions ``shifted`` and ``overlap`` (``overlap_static`` /
    ``overlap_dsp``; the second run's no-prompt result repeats the first's and is not kept).
    """
    seqs, ids = split["sequences"], split["ids"]
    evals = seqs["repeated"] + seqs["heldout"]
    kwargs = dict(attack_ids=ids["attack"], eval_ids=ids["repeated"] + ids["heldout"]) if mode == "own" else {}
    n_rep = len(seqs["repeated"])
    out = {"n_attack": len(seqs["attack"]), "n_eval": n_rep, "n_heldout_control": len(seqs["heldout"]),
           "train_loss": {}, "attack_seconds": {}}
    for variant in ("shifted", "overlap"):
        start = time.perf_counter()
        with memsinks.sinks_mode(model, mode):
            res = dsp_extraction(model, seqs["attack"], evals, prefix_len=s.prefix_len, suffix_len=s.suffix_len,
                                 config=replace(cfg, prompt_positions=variant), **kwargs)
        assert res.n_attack == len(seqs["attack"]) and res.n_eval == len(evals)
        out["attack_seconds"][variant] = round(time.perf_counter() - start, 1)
        out["train_loss"][variant] = res.train_loss
        for kind in (KINDS if variant == "shifted" else KINDS[1:]):
            r = getattr(res, kind)
            name = kind if variant == "shifted" else f"overlap_{kind}"
            out[name] = subset(r, slice(0, n_rep))
            out[f"heldout_{name}"] = subset(r, slice(n_rep, None))
    return out


def write_markdown(path: str, result: dict) -> None:
    d, cfg = result["data"], result["dsp_config"]
    first = next(iter(result["models"].values()))
    split = first["train_loss"]["shifted"]["dsp"]
    lines = [
        "# DSP extraction on scenario-1 models", "",
        f"Command: `{result['command']}`", "",
        f"Machine: {result['machine']}", "",
        f"Text: {d['source']}; seed {result['seed']}; {d['training_rows']} training rows, "
        f"{d['repeated_windows']} windows repeated {d['repeats']}x, {d['max_steps']} optimizer steps per arm "
        f"(scenario 1's settings). Prefix {result['prefix_len']} tokens, suffix {result['suffix_len']} tokens.", "",
        f"Attacker: {first['n_attack']} (prefix, suffix) pairs from the unique training windows "
        f"({split['n_train']} to train, {split['n_validation']} to pick the step); evaluated on the "
        f"{first['n_eval']} repeated windows, disjoint from the attacker's pairs (asserted on content IDs). "
        f"m = {cfg['n_prompts']} soft prompts, {cfg['steps']} steps each for the static prompt and the DSP "
        f"generator ({cfg['generator_layers']} identity-initialised blocks), lr {cfg['lr']}.", "",
        "*shifted* (`DSPConfig(prompt_positions=\"shifted\")`, the paper's attack): the prompts are prepended, so "
        f"the prefix moves to positions {cfg['n_prompts']}..{cfg['n_prompts'] + result['prefix_len'] - 1}. "
        "*overlap* (`prompt_positions=\"overlap\"`): the prompts take positions 0..m-1 and the prefix and suffix "
        "keep their training positions from 0 (the scenario-1 models only ever saw windows starting at position "
        "0).", "",
        "## Extraction of the repeated windows", "",
        "| model | attack | exact match | token accuracy | n-gram share |",
        "|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        for kind in ROWS:
            lines.append(f"| {name} | {LABELS[kind]} | {m[kind]['exact_match']:.3f} | "
                         f"{m[kind]['token_accuracy']:.3f} | {m[kind]['ngram_share']:.3f} |")
    lines += ["", f"## Control: held-out windows (never trained on, {first['n_heldout_control']} windows)", "",
              "| model | attack | exact match | token accuracy | n-gram share |", "|---|---|---|---|---|"]
    for name, m in result["models"].items():
        for kind in ROWS:
            r = m[f"heldout_{kind}"]
            lines.append(f"| {name} | {LABELS[kind]} | {r['exact_match']:.3f} | {r['token_accuracy']:.3f} | "
                         f"{r['ngram_share']:.3f} |")
    lines += ["", "## Attacker's suffix loss (nats/token, kept prompt; train / validation pairs)", "",
              "| model | positions | static train | static validation | DSP train | DSP validation | seconds |",
              "|---|---|---|---|---|---|---|"]
    for name, m in result["models"].items():
        for variant, losses in m["train_loss"].items():
            st, dy = losses["static"], losses["dsp"]
            lines.append(f"| {name} | {variant} | {st['train']:.3f} | {st.get('validation', float('nan')):.3f} | "
                         f"{dy['train']:.3f} | {dy.get('validation', float('nan')):.3f} | "
                         f"{m['attack_seconds'][variant]} |")
    lines += ["", "`memsinks_own` routes each window to its own sinks with its training ID, which the shipped "
                  "model (sinks dropped) does not allow; it is a reference for what the sinks hold."]
    if result["quick"]:
        lines += ["", "Quick smoke run: the numbers are not the science."]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny data, model and attack (a smoke test)")
    p.add_argument("--text", help="text file to train on (default: the embedded demo generator)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-attack", type=int, help="attacker-known training pairs (default 256; quick 24)")
    p.add_argument("--steps", type=int, help="optimizer steps per prompt (default 300; quick 20)")
    p.add_argument("--n-prompts", type=int, default=8, help="soft-prompt vectors m")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: min(2, CPUs))")
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "dsp"))
    args = p.parse_args(argv)
    if args.text and not os.path.isfile(args.text):
        p.error(f"--text {args.text}: no such file")
    threads = args.threads or max(1, min(2, os.cpu_count() or 1))
    torch.set_num_threads(threads)
    s = quick_settings() if args.quick else Scenario1Settings()
    n_attack = args.n_attack or (24 if args.quick else 256)
    cfg = DSPConfig(n_prompts=args.n_prompts, steps=args.steps or (20 if args.quick else 300),
                    eval_every=5 if args.quick else 25, seed=args.seed)
    started = time.perf_counter()

    text, source = load_text(args.text, s.max_chars)
    tok = scenario1_tokenizer(text, s.vocab_size)
    data = build_scenario1(text, source, tok, s, args.seed)
    split = split_attack_eval(data, n_attack, args.seed)
    stream = data.sources(s.repeats, s.repeats)
    models, training = {}, {}
    for arm in ("standard", "memsinks"):
        model, training[arm] = train_scenario1_arm(arm, data, tok, s, args.seed)
        for mode in (("drop", "own") if arm == "memsinks" else (None,)):
            name = f"memsinks_{mode}" if mode else arm
            models[name] = attack(model, mode, split, s, cfg)
            models[name]["training"] = training[arm]
            r = models[name]
            print(f"{name:<14} exact match on repeated windows: " + ", ".join(
                f"{LABELS[k]} {r[k]['exact_match']:.3f}" for k in ROWS) + f" (attack {r['attack_seconds']} s)",
                flush=True)

    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/dsp_extraction.py"]
                                   + (sys.argv[1:] if argv is None else list(argv)))
    result = {
        "command": command,
        "quick": args.quick,
        "seed": args.seed,
        "prefix_len": s.prefix_len,
        "suffix_len": s.suffix_len,
        "models": models,
        "data": {"source": source, "unique_windows": len(data.corpus.train),
                 "repeated_windows": len(data.corpus.repeated),
                 "heldout_windows": len(data.corpus.heldout), "repeats": s.repeats,
                 "training_rows": len(stream_rows(stream)), "max_steps": steps_for(stream, s.epochs, s.batch_size),
                 "attack_pairs_from": "unique training windows", "eval_pairs_from": "repeated windows",
                 "disjoint": True},
        "dsp_config": asdict(cfg),
        "scenario1": to_dict(s),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} with {threads} threads",
        "seconds": round(time.perf_counter() - started, 1),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    write_markdown(os.path.join(args.out, "results.md"), result)
    print(f"wrote {args.out} in {result['seconds']} s")
    return result


if __name__ == "__main__":
    main()
