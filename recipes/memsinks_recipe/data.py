"""The recipe's data: what is trained on, what the probes and the report measure, prepared once per run.

Pretraining (``scenario: pretrain``) uses the memorization corpus ``memsinks demo`` trains on
(``memsinks._memorization_corpus``): the embedded stories, or windows of a text corpus;
fine-tuning uses documents (one row each, truncated to ``data.window`` tokens), optionally with
an ID column naming each row's user or document, and with ``data.mark_private_spans`` a
``private_mask`` column marking the tokens only the sinks may learn. In both, ``n_repeated``
rows and ``n_canaries`` planted canaries are trained on ``repeats`` times (the memorization
targets the probes measure) and ``n_heldout`` rows are never trained on.

Rank 0 prepares the data and saves it under ``output_dir/recipe_data`` (tokenizer, training
set, probe sets, the settings that made them); every rank then reads that copy, so all ranks
train on identical data, and ``--resume`` (under any number of processes) reuses it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import shutil
from dataclasses import dataclass
from typing import Any

from memsinks_recipe.common import RecipeError, read_json, say, write_json
from memsinks_recipe.config import DataArguments, Recipe


@dataclass
class PreparedData:
    """What the recipe trains and measures on; written once by rank 0, read by every rank and by ``--resume``.

    ``members`` are the repeated rows (the memorization targets) with their training IDs;
    ``canaries`` the planted canary rows with their IDs and texts; ``heldout`` rows never trained on.
    """

    tokenizer: Any
    train: Any  # datasets.Dataset with input_ids and sequence_ids (and private_mask with data.mark_private_spans)
    members: list[list[int]]
    member_ids: list[int]
    canaries: list[list[int]]
    canary_ids: list[int]
    canary_texts: list[str]
    heldout: list[list[int]]


#: Tokens of a document past the window that its private spans are looked for in (``data.mark_private_spans``).
PRIVATE_SPAN_LOOKAHEAD = 64


def data_fingerprint(r: Recipe) -> dict:
    """The settings that decide the prepared data (every ``data`` key, ``mark_private_spans`` and
    ``private_patterns`` included); a resumed run must have the same ones."""
    return {"scenario": r.scenario, "data": dataclasses.asdict(r.data), "tokenizer": r.model.tokenizer,
            "name_or_path": r.model.name_or_path, "gguf_file": r.model.gguf_file}


def prepare_data(r: Recipe, tokenizer=None) -> PreparedData:
    """Build the training set and the probe sets for the scenario (no files written)."""
    if r.scenario == "pretrain":
        return _pretrain_corpus(r.data, r.model.tokenizer)
    return _finetune_rows(r.data, tokenizer)


def _pretrain_corpus(d: DataArguments, tokenizer_name: str | None) -> PreparedData:
    """The memorization corpus of ``d``: the embedded stories, or (with a text or a pretrained tokenizer) windows of
    the text, ``n_repeated`` repeated ``repeats`` times, ``n_heldout`` held out, canaries planted."""
    import memsinks
    from memsinks._memorization_corpus import build, join_documents, training_dataset

    text = tok = None
    if d.source != "embedded" or tokenizer_name:
        documents = _embedded_stories(d) if d.source == "embedded" else _read_documents(d)
        text = join_documents(documents, d.max_chars)
        tok = load_tokenizer(tokenizer_name) if tokenizer_name else None
    try:
        corpus = build(d, text=text, tokenizer=tok)
    except ValueError as err:
        raise RecipeError(f"data.source {d.source}: {err}") from None
    ds = training_dataset(corpus.sources(d.repeats), seed=d.seed)
    return PreparedData(corpus.tokenizer, ds, corpus.repeated, [memsinks.content_id(s) for s in corpus.repeated],
                        corpus.canaries, [memsinks.content_id(s) for s in corpus.canaries], corpus.canary_texts,
                        corpus.heldout)


def _embedded_stories(d: DataArguments) -> list[str]:
    """``n_train + n_repeated + n_heldout`` stories of the embedded corpus, as documents."""
    from memsinks.corpus import make_demo_corpus

    return make_demo_corpus(n_train=d.n_train + d.n_repeated + d.n_heldout, n_repeated=0, n_heldout=0, n_canaries=0,
                            seed=d.seed).train


def _read_documents(d: DataArguments) -> list[str]:
    """``memsinks.corpus.load_documents`` of data.source, its failures turned into messages about the config."""
    from memsinks.corpus import load_documents

    try:
        return load_documents(os.path.expanduser(d.source), text_field=d.text_field, split=d.split)
    except (KeyError, ValueError, FileNotFoundError) as err:
        raise RecipeError(f"data.source {d.source}: {err}") from None
    except Exception as err:  # a datasets name that cannot be loaded here (no hub, no such dataset)
        raise RecipeError(f"data.source {d.source!r} is not a local file or directory, and loading it as a datasets "
                          f"dataset failed ({type(err).__name__}: {err}). Give a .txt/.jsonl path, a save_to_disk "
                          "directory, 'embedded', or a dataset name reachable from this machine.") from None


def _load_table(d: DataArguments):
    """The fine-tuning documents as a ``datasets.Dataset`` with the text column (and the ID column if named)."""
    import datasets

    from memsinks.corpus import load_documents

    source = os.path.expanduser(d.source)
    if d.source == "embedded":
        return datasets.Dataset.from_dict({d.text_field: _embedded_stories(d)})
    try:
        if os.path.isfile(source) and source.endswith((".jsonl", ".json")):
            table = datasets.load_dataset("json", data_files=source, split="train")
        elif os.path.isfile(source):
            table = datasets.Dataset.from_dict({d.text_field: load_documents(source)})
        elif os.path.isdir(source):
            table = datasets.load_from_disk(source)
            if isinstance(table, datasets.DatasetDict):
                if d.split not in table:
                    raise RecipeError(f"data.source {d.source} has splits {list(table)}, not data.split={d.split!r}.")
                table = table[d.split]
        else:
            table = datasets.load_dataset(d.source, split=d.split)
    except RecipeError:
        raise
    except Exception as err:
        raise RecipeError(f"data.source {d.source!r} could not be read ({type(err).__name__}: {err}). Give a "
                          ".txt/.jsonl path, a save_to_disk directory, 'embedded', or a dataset name reachable from "
                          "this machine.") from None
    if d.text_field not in table.column_names:
        raise RecipeError(f"data.source {d.source} has no text column data.text_field={d.text_field!r}; its columns "
                          f"are {table.column_names}.")
    if d.id_column is not None and d.id_column not in table.column_names:
        near = difflib.get_close_matches(d.id_column, table.column_names, n=1)
        raise RecipeError(
            f"data.id_column={d.id_column!r} is not a column of data.source {d.source} (columns: "
            f"{table.column_names})" + (f"; did you mean {near[0]!r}?" if near else ".")
            + " Name the column that identifies each row's user or document, or remove data.id_column to give "
              "each row the hash of its tokens.")
    return table


def _finetune_rows(d: DataArguments, tokenizer) -> PreparedData:
    """Documents truncated to ``window`` tokens; ``n_repeated`` of them and the canaries repeated ``repeats`` times."""
    import numpy as np

    import memsinks
    from memsinks._memorization_corpus import Source, draw_canaries, training_dataset

    table = _load_table(d)
    need = d.n_repeated + d.n_heldout + 1
    if len(table) < need:
        raise RecipeError(f"data.source {d.source} has {len(table)} rows; data.n_repeated + data.n_heldout + 1 = "
                          f"{need} are needed. Lower them or give more data.")
    order = np.random.default_rng(d.seed).permutation(len(table))
    heldout_idx = order[: d.n_heldout]
    repeated_idx = order[d.n_heldout: d.n_heldout + d.n_repeated]
    train_idx = order[d.n_heldout + d.n_repeated:][: d.n_train]
    texts = table[d.text_field]
    keys = table[d.id_column] if d.id_column else None
    eos = tokenizer.eos_token_id
    kept = d.window - (1 if eos is not None else 0)
    contexts: list[tuple[list[int], list[int]]] = []  # (a trained row, its document's tokens a little past the cut)

    def encode(text: str, trained: bool = True) -> list[int]:
        ids = tokenizer(str(text))["input_ids"]
        row = ids[:kept] + ([eos] if eos is not None else [])
        if d.mark_private_spans and trained:
            contexts.append((row, ids[: kept + PRIVATE_SPAN_LOOKAHEAD]))
        return row

    def rows(indices, trained: bool = True) -> tuple[list[list[int]], list]:
        return [encode(texts[i], trained) for i in indices], [keys[i] for i in indices] if keys is not None else []

    train, train_keys = rows(train_idx)
    repeated, repeated_keys = rows(repeated_idx)
    heldout, _ = rows(heldout_idx, trained=False)
    canary_texts = draw_canaries(d.n_canaries, d.canary_digits, d.seed)
    canaries = [encode(t) for t in canary_texts]
    if keys is None:
        sources = [Source(train), Source(repeated + canaries, d.repeats)]
        member_ids = [memsinks.content_id(s) for s in repeated]
        canary_ids = [memsinks.content_id(s) for s in canaries]
    else:
        member_ids = [memsinks.key_id(k) for k in repeated_keys]
        canary_ids = [memsinks.key_id(f"memsinks-canary-{i}") for i in range(len(canaries))]
        sources = [Source(train, ids=[memsinks.key_id(k) for k in train_keys]),
                   Source(repeated + canaries, d.repeats, ids=member_ids + canary_ids)]
    ds = training_dataset(sources, seed=d.seed)
    if d.mark_private_spans:
        ds = _mark_private(ds, tokenizer, d.private_patterns, contexts, eos is not None)
    return PreparedData(tokenizer, ds, repeated, member_ids, canaries, canary_ids, canary_texts, heldout)


def _mark_private(ds, tokenizer, patterns: dict | None, contexts: list[tuple[list[int], list[int]]],
                  ends_with_eos: bool):
    """``ds`` with a ``private_mask`` column: ``memsinks.mark_private_spans`` over each trained row's document
    tokens up to ``PRIVATE_SPAN_LOOKAHEAD`` past the window, cut back to the row.

    Marking the cut rows alone would miss a number the window cuts through: the digits kept can be too
    few for the patterns (6, or 7 for a phone number), and the model would learn them. The closing EOS
    is never private; equal rows from different documents share a mask marking what any of them marks.
    """
    import datasets

    import memsinks
    from memsinks.data import PRIVATE_MASK

    marked = memsinks.mark_private_spans(datasets.Dataset.from_dict({"input_ids": [c for _, c in contexts]}),
                                         tokenizer, patterns=patterns)[PRIVATE_MASK]
    masks: dict[tuple[int, ...], list[int]] = {}
    for (row, _), mask in zip(contexts, marked):
        n = len(row) - (1 if ends_with_eos else 0)
        mask = list(mask[:n]) + [0] * (len(row) - n)
        seen = masks.setdefault(tuple(row), mask)
        masks[tuple(row)] = [a | b for a, b in zip(seen, mask)]
    column = [masks[tuple(row)] for row in ds["input_ids"]]
    n_rows = sum(1 for m in column if any(m))
    say(f"data.mark_private_spans: {sum(map(sum, column)):,} tokens in {n_rows:,} of {len(column):,} training rows "
        "marked private (only the sinks learn them)")
    return ds.add_column(PRIVATE_MASK, column, feature=datasets.Sequence(datasets.Value("int8")))


def save_prepared(data: PreparedData, fingerprint: dict, directory: str) -> None:
    """Write the prepared data atomically (a temporary directory renamed into place)."""
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = directory + f".partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    data.tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
    data.train.save_to_disk(os.path.join(tmp, "train"))
    write_json(os.path.join(tmp, "probe_sets.json"), {
        "members": data.members, "member_ids": data.member_ids, "canaries": data.canaries,
        "canary_ids": data.canary_ids, "canary_texts": data.canary_texts, "heldout": data.heldout})
    write_json(os.path.join(tmp, "settings.json"), fingerprint)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def load_prepared(directory: str, fingerprint: dict | None) -> PreparedData:
    """Read prepared data; with ``fingerprint``, refuse data prepared with other settings.

    A ``data`` key missing from the saved settings (the recipe gained it later) counts as its default,
    so that data prepared before, say, ``data.mark_private_spans`` existed can still be resumed.
    """
    import datasets
    from transformers import AutoTokenizer

    saved = read_json(os.path.join(directory, "settings.json"))
    if "data" in saved:  # a data key added to the recipe after this data was prepared: it had the key's default
        saved["data"] = {**{f.name: f.default for f in dataclasses.fields(DataArguments)
                            if f.default is not dataclasses.MISSING}, **saved["data"]}
    if fingerprint is not None and saved != json.loads(json.dumps(fingerprint)):
        changed = sorted(k for k in set(saved.get("data", {})) | set(fingerprint["data"])
                         if saved.get("data", {}).get(k) != fingerprint["data"].get(k))
        changed += [k for k in ("scenario", "tokenizer", "name_or_path", "gguf_file") if saved.get(k) != fingerprint[k]]
        raise RecipeError(
            f"{directory} holds data prepared with other settings (changed: {', '.join(changed)}). A run and its "
            "resumption must train on the same data. Use a new training.output_dir for new data settings.")
    sets = read_json(os.path.join(directory, "probe_sets.json"))
    tok = AutoTokenizer.from_pretrained(os.path.join(directory, "tokenizer"))
    train = datasets.load_from_disk(os.path.join(directory, "train"))
    return PreparedData(tok, train, sets["members"], sets["member_ids"], sets["canaries"], sets["canary_ids"],
                        sets["canary_texts"], sets["heldout"])


def load_tokenizer(name: str, gguf_file: str | None = None):
    """``memsinks._causal_lm.load_tokenizer`` (padding with EOS where there is no padding token), its failures
    turned into messages about the config."""
    from memsinks._causal_lm import load_tokenizer as load

    try:
        return load(name, gguf_file=gguf_file)
    except Exception as err:
        raise RecipeError(f"Could not load a tokenizer from {name!r} ({type(err).__name__}: {err}).") from None


def on_rank0_then_all(fn, what: str):
    """Run ``fn`` on rank 0 while the others wait; every rank then gets rank 0's outcome.

    A failure on rank 0 (bad data) is sent to every rank, so all stop with the same message
    instead of waiting at a barrier until the collective timeout.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        fn()
        return
    status = [None]
    if dist.get_rank() == 0:
        try:
            fn()
        except RecipeError as err:
            status = [f"RecipeError:{err}"]
        except Exception as err:
            status = [f"{type(err).__name__}:{err}"]
    dist.broadcast_object_list(status, src=0)
    if status[0] is not None:
        kind, _, message = status[0].partition(":")
        if kind == "RecipeError":
            raise RecipeError(message)
        raise RuntimeError(f"rank 0 failed while {what}: {kind}: {message}")
