"""``memsinks demo``: train a small GPT-2 with sinks on the embedded corpus and show what dropping them does.

Two models with the same data, seed and step budget: one with split-placement sinks, one
without. The table shows the loss on the repeated stories, on the planted canaries and on
held-out stories: with sinks on (``own``), with sinks dropped (``drop``) and for the plain
model. A rising repeated/canary loss under ``drop`` with a flat held-out loss is the method
working: the memorization sat in the sinks, the language in the shared units.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

import memsinks
from memsinks._cli_args import data_source, path_arg
from memsinks._io import check_output_file, write_json
from memsinks.corpus import load_documents, make_demo_corpus, split_text_windows, train_tokenizer
from memsinks.probes import token_nlls


@dataclass
class DemoSettings:
    n_train: int = 1500
    n_repeated: int = 16
    repeats: int = 24
    n_heldout: int = 64
    n_canaries: int = 4
    canary_digits: int = 6
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 3e-3
    n_layer: int = 4
    n_embd: int = 128
    vocab_size: int = 512
    p_gen: float = 0.5
    p_mem: float = 0.3
    seed: int = 0
    data: str | None = None  # a .txt / .jsonl file, a saved dataset directory or a datasets name
    window: int = 64

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
    from datasets import Dataset

    if s.data:
        return _build_data_from_text(s)
    corpus = make_demo_corpus(n_train=s.n_train, n_repeated=s.n_repeated, n_heldout=s.n_heldout,
                              n_canaries=s.n_canaries, canary_digits=s.canary_digits, seed=s.seed)
    tok = train_tokenizer(corpus.train + corpus.repeated + corpus.canaries, vocab_size=s.vocab_size)
    eos = tok.eos_token_id

    def enc(text: str) -> list[int]:
        return [eos] + tok(text)["input_ids"] + [eos]

    texts = corpus.train + (corpus.repeated + corpus.canaries) * s.repeats
    ds = Dataset.from_dict({"input_ids": [enc(t) for t in texts]}).shuffle(seed=s.seed)
    ds = memsinks.assign_sequence_ids(ds)
    evals = {
        "repeated": [enc(t) for t in corpus.repeated],
        "canaries": [enc(t) for t in corpus.canaries],
        "heldout": [enc(t) for t in corpus.heldout],
    }
    return tok, ds, evals


def _build_data_from_text(s: DemoSettings):
    from datasets import Dataset

    text = "\n\n".join(load_documents(s.data))
    canaries = make_demo_corpus(n_train=0, n_repeated=0, n_heldout=0, n_canaries=s.n_canaries,
                                canary_digits=s.canary_digits, seed=s.seed).canaries
    samples = [text[i:i + 2000] for i in range(0, min(len(text), 2_000_000), 2000)]
    tok = train_tokenizer(samples + canaries, vocab_size=s.vocab_size)
    split = split_text_windows(text, tok, window=s.window, n_repeated=s.n_repeated, n_heldout=s.n_heldout,
                               seed=s.seed, max_windows=max(s.n_train, 1) + s.n_repeated + s.n_heldout)
    eos = tok.eos_token_id
    canary_rows = [[eos] + tok(c)["input_ids"] + [eos] for c in canaries]
    rows = split.train + (split.repeated + canary_rows) * s.repeats
    ds = Dataset.from_dict({"input_ids": rows}).shuffle(seed=s.seed)
    ds = memsinks.assign_sequence_ids(ds)
    return tok, ds, {"repeated": split.repeated, "canaries": canary_rows, "heldout": split.heldout}


def build_model(s: DemoSettings, vocab_size: int, with_sinks: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(s.seed)
    config = GPT2Config(n_layer=s.n_layer, n_embd=s.n_embd, n_head=4, n_positions=256, vocab_size=vocab_size,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    if with_sinks:
        memsinks.add_sinks(model, memsinks.SinksConfig(p_gen=s.p_gen, p_mem=s.p_mem, routing_seed=s.seed))
    return model


def train_model(model, tok, ds, s: DemoSettings, output_dir: str) -> float:
    """Train with the stock Trainer; returns the wall time in seconds."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=output_dir, num_train_epochs=s.epochs, per_device_train_batch_size=s.batch_size,
        learning_rate=s.learning_rate, lr_scheduler_type="cosine", warmup_steps=10, weight_decay=0.0,
        logging_steps=50, save_strategy="no", report_to=[], seed=s.seed, disable_tqdm=True,
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
    )
    collator = memsinks.SinksDataCollator(tok, require_ids=memsinks.has_sinks(model))
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator)
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
            ctx = memsinks.sinks_mode(model, mode) if mode != "plain" else contextlib.nullcontext()
            with ctx:
                nlls = token_nlls(model, seqs, ids if mode != "plain" else None, pad_token_id=pad)
            results[(name, mode)] = float(np.mean([x[-keep:].mean() if keep else x.mean() for x in nlls]))
    return results


def run_demo(settings: DemoSettings, output_dir: str | None = None, echo=print) -> dict:
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))
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
