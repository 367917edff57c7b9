"""The embedded demo corpus: learnable English-like stories, planted canaries, a local tokenizer.

Nothing here downloads anything. ``make_demo_corpus`` writes templated stories over a small
controlled vocabulary (so a tiny model learns the language in minutes), plants canaries
(secret strings such as an account number) and marks a subset of stories to be repeated:
the same setting as the paper's controlled experiment, at laptop scale. ``train_tokenizer``
trains a byte-level BPE tokenizer on any texts with the ``tokenizers`` library.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

_NAMES = ["Anna", "Ben", "Clara", "David", "Ella", "Finn", "Grace", "Hugo", "Iris", "Jack", "Lena", "Max",
          "Nora", "Oscar", "Pia", "Sam", "Tom", "Vera", "Will", "Zoe"]
_ANIMALS = ["cat", "dog", "bird", "fox", "rabbit", "horse", "duck", "mouse", "frog", "bear"]
_PLACES = ["park", "forest", "garden", "river", "beach", "market", "school", "library", "farm", "hill"]
_OBJECTS = ["ball", "kite", "book", "apple", "hat", "box", "cake", "map", "lamp", "boat"]
_COLORS = ["red", "blue", "green", "yellow", "small", "big", "old", "new", "bright", "soft"]
_FEELINGS = ["happy", "sad", "tired", "excited", "calm", "curious", "proud", "scared"]
_VERBS = ["found", "lost", "carried", "painted", "shared", "hid", "opened", "fixed"]

_TEMPLATES = [
    "{a} went to the {p} with a {c} {o}.",
    "At the {p}, {a} saw a {n} near the {o}.",
    "{a} felt {f} because the {n} {v} the {o}.",
    "The {n} and {b} walked to the {p} together.",
    "{b} {v} a {c} {o} and gave it to {a}.",
    "Later, {a} and {b} were {f} at the {p}.",
    "{a} asked {b} where the {c} {o} was.",
    "The {c} {n} ran across the {p} after the {o}.",
]


@dataclass
class DemoCorpus:
    """Texts of the demo: ``train`` (unique stories), ``repeated`` (stories to repeat),
    ``heldout`` (never trained on), ``canaries`` (planted secrets) and ``canary_space``
    (the digits each canary draws from, for exposure)."""

    train: list[str]
    repeated: list[str]
    heldout: list[str]
    canaries: list[str]
    canary_prefix: str = "my account number is"
    canary_digits: int = 6
    extra: dict = field(default_factory=dict)


def _story(rng: random.Random, sentences: int) -> str:
    a, b = rng.sample(_NAMES, 2)
    parts = []
    for _ in range(sentences):
        parts.append(rng.choice(_TEMPLATES).format(
            a=a, b=b, n=rng.choice(_ANIMALS), p=rng.choice(_PLACES), o=rng.choice(_OBJECTS),
            c=rng.choice(_COLORS), f=rng.choice(_FEELINGS), v=rng.choice(_VERBS)))
    return " ".join(parts)


def canary_text(name: str, digits: str, prefix: str = "my account number is") -> str:
    return f"{name} said: {prefix} {digits}."


def make_demo_corpus(
    n_train: int = 2000,
    n_repeated: int = 32,
    n_heldout: int = 200,
    n_canaries: int = 4,
    sentences: int = 6,
    canary_digits: int = 6,
    seed: int = 0,
) -> DemoCorpus:
    """Generate the demo texts; the same seed always gives the same corpus."""
    rng = random.Random(seed)
    seen: set[str] = set()

    def fresh() -> str:
        while True:
            s = _story(rng, sentences)
            if s not in seen:
                seen.add(s)
                return s

    train = [fresh() for _ in range(n_train)]
    repeated = [fresh() for _ in range(n_repeated)]
    heldout = [fresh() for _ in range(n_heldout)]
    canaries = [canary_text(rng.choice(_NAMES), "".join(rng.choice("0123456789") for _ in range(canary_digits)))
                for _ in range(n_canaries)]
    return DemoCorpus(train=train, repeated=repeated, heldout=heldout, canaries=canaries, canary_digits=canary_digits)


def train_tokenizer(texts: list[str], vocab_size: int = 512, model_max_length: int = 1024):
    """Train a byte-level BPE tokenizer on ``texts`` locally; returns a ``PreTrainedTokenizerFast``.

    Digits are split one per token, so a canary's secret is a fixed number of tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length)
    fast.eos_token = "<|endoftext|>"
    fast.bos_token = "<|endoftext|>"
    fast.pad_token = "<|endoftext|>"
    return fast


@dataclass
class WindowSplit:
    """Fixed-length token windows of a text, split for a memorization experiment.

    ``repeated``: windows to repeat in training; ``heldout``: never trained on; ``train``: the rest.
    """

    train: list[list[int]]
    repeated: list[list[int]]
    heldout: list[list[int]]

    def training_rows(self, repeats: int) -> list[list[int]]:
        """The training stream: every unique window once, each repeated window ``repeats`` times."""
        return self.train + self.repeated * repeats


def split_text_windows(
    text: str, tokenizer, window: int = 64, n_repeated: int = 16, n_heldout: int = 64, seed: int = 0,
    max_windows: int | None = None,
) -> WindowSplit:
    """Tokenize ``text``, cut it into ``window``-token windows and draw disjoint repeated and held-out sets."""
    import numpy as np

    from memsinks.data import chunk_tokens

    ids = tokenizer(text)["input_ids"]
    windows = chunk_tokens(ids, window)
    if max_windows is not None:
        windows = windows[:max_windows]
    if len(windows) < n_repeated + n_heldout + 1:
        raise ValueError(f"The text gives only {len(windows)} windows of {window} tokens; need more than "
                         f"{n_repeated + n_heldout} (repeated + held-out). Use a longer text or smaller sets.")
    order = np.random.default_rng(seed).permutation(len(windows))
    pick = [windows[i] for i in order]
    return WindowSplit(train=pick[n_repeated + n_heldout:], repeated=pick[:n_repeated],
                       heldout=pick[n_repeated:n_repeated + n_heldout])


def load_documents(source: str, text_field: str = "text", split: str = "train") -> list[str]:
    """Documents from a local ``.txt`` file (blank-line separated paragraphs), a ``.jsonl`` file
    (one JSON object per line with a ``text_field``), a directory saved by ``datasets``'
    ``save_to_disk``, or the name of any ``datasets`` dataset (``load_dataset(source, split=split)``).
    """
    import json
    import os

    if os.path.isfile(source):
        if source.endswith(".jsonl"):
            docs = []
            with open(source, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    if text_field not in row:
                        raise KeyError(f"{source}:{n} has no {text_field!r} field (fields: {sorted(row)}).")
                    docs.append(str(row[text_field]))
        else:
            with open(source, encoding="utf-8") as f:
                docs = [p.strip() for p in f.read().split("\n\n") if p.strip()]
    else:
        import datasets

        if os.path.isdir(source):
            ds = datasets.load_from_disk(source)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(source, split=split)
        if text_field not in ds.column_names:
            raise KeyError(f"Dataset {source!r} has no {text_field!r} column; its columns are {ds.column_names}.")
        docs = [str(t) for t in ds[text_field]]
    if not docs:
        raise ValueError(f"No text found in {source!r}.")
    return docs
