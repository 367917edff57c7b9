"""``memsinks demo``: train a small GPT-2 with sinks on the embedded corpus and show what dropping them does.

Two models with the same data, seed and step budget: one with split-placement sinks, one
without. The table shows the loss on the repeated stories, on the planted canaries and on
held-out stories: with sinks on (``own``), with sinks dropped (``drop``) and for the plain
model. A rising repeated/canary loss under ``drop`` with a flat held-out loss is the method
working: the memorization sat in the sinks, the language in the shared units.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

import memsinks
from memsinks._memorization_corpus import CorpusConfig, build, join_documents, training_dataset
from memsinks._small_decoder import DecoderShape, build_decoder
from memsinks._trainer_setup import experiment_arguments, sinks_trainer
from memsinks._cli_args import data_source, path_arg
from memsinks._io import check_output_file, write_json
from memsinks.corpus import load_documents
from memsinks.probes import token_nlls


@dataclass
class DemoSettings(CorpusConfig):
    """The demo's corpus (``CorpusConfig``), its 4-layer GPT-2 and how it is trained."""

    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 3e-3
    n_layer: int = 4
    n_embd: int = 128
    p_gen: float = 0.5
    p_mem: float = 0.3
    data: str | None = None  # a .txt / .jsonl file, a saved dataset directory or a datasets name

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(n_train=300, n_repeated=8, repeats=16, n_heldout=32, n_canaries=2, epochs=2,
                   n_layer=2, n_embd=64, vocab_size=384)


def build_data(s: DemoSettings):
    """Tokenizer, the training dataset (with content IDs) and the token lists to evaluate.

    With ``s.data`` the text comes from the user's file or dataset, cut into ``s.window``-token
    windows of which ``n_repeated`` are repeated and ``n_heldout`` held out; the canaries
    are planted as in the embedded corpus.
    """
    text = join_documents(load_documents(s.data), s.max_chars) if s.data else None
    corpus = build(s, text=text)
    ds = training_dataset(corpus.sources(s.repeats), seed=s.seed)
    evals = {"repeated": corpus.repeated, "canaries": corpus.canaries, "heldout": corpus.heldout}
    return corpus.tokenizer, ds, evals


def build_model(s: DemoSettings, vocab_size: int, with_sinks: bool):
    shape = DecoderShape(family="gpt2", n_layer=s.n_layer, n_embd=s.n_embd, n_head=4, intermediate=None)
    model = build_decoder(shape, vocab_size, seed=s.seed, bos_token_id=0, eos_token_id=0)
    if with_sinks:
        memsinks.add_sinks(model, memsinks.SinksConfig(p_gen=s.p_gen, p_mem=s.p_mem, routing_seed=s.seed))
    return model


def training_arguments(s: DemoSettings, output_dir: str):
    """The demo's ``TrainingArguments`` (``benchmarks/probe_speed.py`` trains the same way)."""
    return experiment_arguments(output_dir, epochs=s.epochs, batch_size=s.batch_size,
                                learning_rate=s.learning_rate, seed=s.seed)


def train_model(model, tok, ds, s: DemoSettings, output_dir: str) -> float:
    """Train with the stock Trainer; returns the wall time in seconds."""
    trainer = sinks_trainer(model, training_arguments(s, output_dir), ds, tok)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def evaluate(model, evals: dict, pad: int, secret_tokens: int) -> dict:
    """Mean loss per eval set: for a model with sinks in 'own' and 'drop' modes, else plain.

    For canaries only the secret (its last ``secret_tokens`` tokens) is scored: the template
    before it is shared by every canary and says nothing about memorization of the secret.
    """
    results = {}
    for name, seqs in evals.items():
        ids = [memsinks.content_id(s) for s in seqs]
        keep = secret_tokens if name == "canaries" else None
        modes = ("own", "drop") if memsinks.has_sinks(model) else ("plain",)
        for mode in modes:
            with memsinks.sinks_mode(model, None if mode == "plain" else mode):
                nlls = token_nlls(model, seqs, ids if mode != "plain" else None, pad_token_id=pad)
            results[(name, mode)] = float(np.mean([x[-keep:].mean() if keep else x.mean() for x in nlls]))
    return results


def run_demo(settings: DemoSettings, output_dir: str | None = None, echo=print) -> dict:
    """Train the demo's two models and print their table. Uses at most 8 of the caller's torch threads (the model is
    tiny; more threads only contend) and gives the caller back its own thread count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 8))
    try:
        return _run_demo(settings, output_dir, echo)
    finally:
        torch.set_num_threads(threads)


def _run_demo(settings: DemoSettings, output_dir: str | None, echo) -> dict:
    tok, ds, evals = build_data(settings)
    what = f"windows of {settings.data}" if settings.data else "stories"
    echo(f"demo: {len(ds)} training sequences ({settings.n_repeated} {what} and {settings.n_canaries} canaries "
         f"repeated {settings.repeats}x), {len(evals['heldout'])} held out")
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = output_dir or tmp
        for with_sinks in (True, False):
            label = "with sinks" if with_sinks else "without sinks"
            model = build_model(settings, len(tok), with_sinks)
            n_params = sum(p.numel() for p in model.parameters())
            echo(f"training a {n_params / 1e6:.2f}M-parameter GPT-2 {label} ...")
            seconds = train_model(model, tok, ds, settings, os.path.join(out, label.replace(" ", "_")))
            # the secret's digits, the final period and the closing EOS token
            results.update(evaluate(model, evals, tok.pad_token_id, secret_tokens=settings.canary_digits + 2))
            results[("time", "sinks" if with_sinks else "plain")] = seconds
    table = format_table(results)
    echo(table)
    return {"table": table, "results": {f"{a}/{b}": v for (a, b), v in results.items()}}


def format_table(results: dict) -> str:
    rows = [("repeated sequences", "repeated"), ("canary secrets", "canaries"), ("held-out sequences", "heldout")]
    lines = [
        "",
        "mean loss (nats/token)  | sinks on (own) | sinks dropped | no sinks",
        "------------------------+----------------+---------------+---------",
    ]
    for label, key in rows:
        lines.append(f"{label:<24}| {results[(key, 'own')]:>14.3f} | {results[(key, 'drop')]:>13.3f} | "
                     f"{results[(key, 'plain')]:>8.3f}")
    own_gap = results[("heldout", "own")] - results[("repeated", "own")]
    closed = (results[("repeated", "drop")] - results[("repeated", "own")]) / own_gap if own_gap > 0 else float("nan")
    lines.append("")
    lines.append(f"Dropping the sinks closes {100 * closed:.0f}% of the repeated-vs-held-out loss gap; held-out loss "
                 f"changes by {100 * (results[('heldout', 'drop')] / results[('heldout', 'plain')] - 1):+.1f}% against "
                 "the model trained without sinks.")
    lines.append(f"Training time: {results[('time', 'sinks')]:.0f} s with sinks, {results[('time', 'plain')]:.0f} s without.")
    return "\n".join(lines)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train a small model with and without sinks on the embedded corpus")
    p.add_argument("--quick", action="store_true", help="a smaller run (under a minute)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", metavar="SOURCE", type=data_source,
                   help="train on this text instead of the embedded corpus: a .txt or .jsonl (field 'text') file, "
                        "a directory saved by datasets, or a datasets dataset name")
    p.add_argument("--json", metavar="FILE", type=path_arg, help="also write the numbers as JSON (a new file)")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    p.set_defaults(func=_main)


def _main(args) -> int:
    if args.json is not None:
        check_output_file(args.json, "--json", force=args.force, inputs=[args.data])
    settings = DemoSettings.quick() if args.quick else DemoSettings()
    settings.seed = args.seed
    settings.data = args.data
    out = run_demo(settings)
    if args.json is not None:
        write_json(args.json, out["results"], force=args.force)
    return 0
