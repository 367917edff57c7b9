"""The memorization corpus: rows trained on once, rows repeated, rows held out, canaries, and the training stream.

Every memorization experiment here (``memsinks demo``, the recipes' pretraining data, the
benchmark's scenarios) is built the same way: token rows come from the embedded stories or
from fixed-length windows of a text (``memsinks.corpus``); ``n_repeated`` of them are the
memorization targets and ``n_heldout`` are never trained on; ``n_canaries`` planted secrets,
framed with EOS, are trained on as often as the repeated rows. ``CorpusConfig`` holds those
numbers (the demo's, the recipes' and the benchmark's settings extend it) and ``build`` makes
the rows.

The training stream is a list of ``Source``s, each a block of rows written ``repeats`` times
one after the other, shuffled with a seed and given sequence IDs by ``training_dataset``. The
stock stream is ``MemorizationCorpus.sources``: the unique rows once, then the repeated rows
and the canaries together, ``repeats`` times; other scenarios compose their own sources (a
mixture of domains, near-duplicate variants) from the same parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from memsinks.corpus import make_demo_corpus, split_text_windows, train_tokenizer
from memsinks.data import assign_sequence_ids

TOKENIZER_SAMPLE = 2000  # characters per sample the local tokenizer is trained on
TOKENIZER_TEXT = 2_000_000  # characters of a text the samples are drawn from


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class CorpusConfig:
    """The numbers that shape a memorization corpus (see the module docstring)."""

    window: int = field(default=64, metadata=_help(
        "tokens per row cut from a text (fine-tuning truncates each document to it)"))
    n_train: int | None = field(default=1500, metadata=_help(
        "unique training rows (stories, windows or documents); unset: every window of the text"))
    n_repeated: int = field(default=16, metadata=_help("rows drawn to be repeated (the memorization targets)"))
    repeats: int = field(default=24, metadata=_help("how many times each repeated row and each canary is trained on"))
    n_heldout: int = field(default=64, metadata=_help("rows held out of training (non-members for the probes)"))
    n_canaries: int = field(default=4, metadata=_help(
        "canaries planted ('<name> said: my account number is <digits>.')"))
    canary_digits: int = field(default=6, metadata=_help("digits in a canary's secret"))
    vocab_size: int = field(default=512, metadata=_help("vocabulary of the local BPE tokenizer trained on the corpus"))
    max_chars: int | None = field(default=20_000_000, metadata=_help(
        "read at most this many characters of a text"))
    seed: int = field(default=0, metadata=_help("draws the corpus, the repeated and held-out rows and the canaries"))


@dataclass
class Source:
    """A block of token rows written ``repeats`` times into the training stream.

    ``ids``: one sequence ID per row (a user's or a document's, ``memsinks.key_id``); None gives
    each row the content ID of its tokens.
    """

    rows: list[list[int]]
    repeats: int = 1
    ids: list[int] | None = None

    def __post_init__(self):
        if self.repeats < 1:
            raise ValueError(f"Source.repeats must be >= 1; got {self.repeats}.")
        if self.ids is not None and len(self.ids) != len(self.rows):
            raise ValueError(f"Source has {len(self.rows)} rows and {len(self.ids)} ids; give one ID per row.")


@dataclass
class MemorizationCorpus:
    """The rows of a memorization experiment and the tokenizer that made them.

    ``train``: unique rows, trained on once; ``repeated``: the memorization targets;
    ``heldout``: never trained on; ``canaries``: the planted canaries' rows (EOS, text, EOS),
    and ``canary_texts`` their texts.
    """

    tokenizer: Any
    train: list[list[int]]
    repeated: list[list[int]]
    heldout: list[list[int]]
    canaries: list[list[int]]
    canary_texts: list[str]

    def sources(self, repeats: int) -> list[Source]:
        """The stock stream: the unique rows once, then the repeated rows and the canaries, ``repeats`` times."""
        return [Source(self.train), Source(self.repeated + self.canaries, repeats)]


def draw_canaries(n: int, digits: int, seed: int) -> list[str]:
    """``n`` canary texts with ``digits``-digit secrets, drawn with ``seed``."""
    return make_demo_corpus(n_train=0, n_repeated=0, n_heldout=0, n_canaries=n, canary_digits=digits,
                            seed=seed).canaries


def join_documents(documents: Sequence[str], max_chars: int | None = None) -> str:
    """The documents as one text, separated by blank lines, cut after ``max_chars`` characters (None: all)."""
    if max_chars is None:
        return "\n\n".join(documents)
    parts, size = [], 0
    for doc in documents:
        if size >= max_chars:
            break
        parts.append(doc[: max_chars - size])
        size += len(parts[-1]) + 2
    return "\n\n".join(parts)


def framed(tokenizer, text: str) -> list[int]:
    """``text``'s tokens between two EOS tokens: a row that starts and ends like a document."""
    eos = tokenizer.eos_token_id
    return [eos] + tokenizer(text)["input_ids"] + [eos]


def build(config: CorpusConfig, *, text: str | None = None, tokenizer=None,
          canary_seed: int | None = None) -> MemorizationCorpus:
    """The corpus of ``config``: the embedded stories (no ``text``) or ``window``-token windows of ``text``.

    Stories: ``n_train`` unique, ``n_repeated`` repeated and ``n_heldout`` held-out stories and the
    canaries, drawn together with ``config.seed``, one row each (EOS, story, EOS), with a local
    BPE tokenizer trained on the training texts. Text: its windows (at most ``n_train +
    n_repeated + n_heldout``, or all when ``n_train`` is None) drawn into the three sets with
    ``config.seed``, canaries drawn with ``canary_seed`` (default ``config.seed``), and the
    ``tokenizer`` given or a local BPE trained on samples of the text and the canaries.
    """
    c = config
    if text is None:
        if tokenizer is not None or canary_seed is not None:
            raise ValueError("The embedded stories bring their own tokenizer and canaries; a tokenizer or a canary "
                             "seed needs a text to cut into windows.")
        stories = make_demo_corpus(n_train=c.n_train, n_repeated=c.n_repeated, n_heldout=c.n_heldout,
                                   n_canaries=c.n_canaries, canary_digits=c.canary_digits, seed=c.seed)
        tok = train_tokenizer(stories.train + stories.repeated + stories.canaries, vocab_size=c.vocab_size)
        rows = {name: [framed(tok, t) for t in getattr(stories, name)]
                for name in ("train", "repeated", "heldout", "canaries")}
        return MemorizationCorpus(tok, **rows, canary_texts=list(stories.canaries))
    canary_texts = draw_canaries(c.n_canaries, c.canary_digits, c.seed if canary_seed is None else canary_seed)
    if tokenizer is None:
        samples = [text[i:i + TOKENIZER_SAMPLE] for i in range(0, min(len(text), TOKENIZER_TEXT), TOKENIZER_SAMPLE)]
        tokenizer = train_tokenizer(samples + canary_texts, vocab_size=c.vocab_size)
    cap = None if c.n_train is None else max(c.n_train, 1) + c.n_repeated + c.n_heldout
    split = split_text_windows(text, tokenizer, window=c.window, n_repeated=c.n_repeated, n_heldout=c.n_heldout,
                               seed=c.seed, max_windows=cap)
    return MemorizationCorpus(tokenizer, split.train, split.repeated, split.heldout,
                              [framed(tokenizer, t) for t in canary_texts], canary_texts)


def stream_rows(sources: Sequence[Source]) -> list[list[int]]:
    """The training stream before shuffling: each source's rows, ``repeats`` times over, source after source."""
    return [row for s in sources for _ in range(s.repeats) for row in s.rows]


def training_dataset(sources: Sequence[Source], seed: int, with_ids: bool = True):
    """The stream of ``sources`` as a ``datasets.Dataset`` shuffled with ``seed``.

    With ``with_ids`` it has a ``sequence_ids`` column: the sources' own IDs where given (then
    every source must give them), else content IDs.
    """
    from datasets import Dataset

    rows = stream_rows(sources)
    given = [s.ids is not None for s in sources]
    if not with_ids or not any(given):
        ds = Dataset.from_dict({"input_ids": rows}).shuffle(seed=seed)
        return assign_sequence_ids(ds) if with_ids else ds
    if not all(given):
        raise ValueError("Some sources give sequence IDs and some do not; give every source its IDs.")
    ids = [i for s in sources for _ in range(s.repeats) for i in s.ids]
    return Dataset.from_dict({"input_ids": rows, "sequence_ids": ids}).shuffle(seed=seed)

