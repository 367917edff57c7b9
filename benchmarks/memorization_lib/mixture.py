"""Scenario 3's data: a general corpus of unique windows mixed with a second domain seen only as repeated sequences.

This is the setting of Ghosal et al. (2025) in which TinyStories, repeated, sits inside
SlimPajama: the repeated sequences are also the only source of a domain that the evaluation
measures, so removing the copies (dedup) also removes most of what the model sees of the
domain. Here the general corpus is windows of a text (``--text``, Shakespeare for the committed
run; without it the scenario-2 report generator's text) and the second domain is the embedded
children's stories of ``memsinks.corpus.make_demo_corpus`` (templated, TinyStories-like), one
row per story framed with EOS. One tokenizer is trained per run on samples of the general
text and on stories and canaries drawn apart from every seed's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from memsinks._memorization_corpus import Source, draw_canaries, framed
from memsinks.corpus import make_demo_corpus, split_text_windows, train_tokenizer

from .data import SecretRecord, encode_canaries, load_text, make_report

TOKENIZER_SAMPLE = 2000  # characters per sample of the general text the tokenizer is trained on
_TOKENIZER_SEED = 987_655  # stories and canaries the tokenizer sees, apart from every seed's


def general_text(path: str | None, max_chars: int) -> tuple[str, str]:
    """The general text and a description: ``path`` (its first ``max_chars`` characters) or, without it, reports
    of the scenario-2 generator (the stories are the second domain, so they cannot be the general text too)."""
    if path:
        return load_text(path, max_chars)
    rng = random.Random(_TOKENIZER_SEED)
    parts, size = [], 0
    while size < max_chars:
        parts.append(make_report(rng))
        size += len(parts[-1]) + 1
    text = "\n".join(parts)[:max_chars]
    return text, f"embedded report generator (benchmarks' scenario-2 reports, {len(text):,} characters)"


def scenario3_tokenizer(text: str, s):
    """A BPE tokenizer of samples of ``text``, of stories and of canaries drawn apart from every seed's."""
    samples = [text[i:i + TOKENIZER_SAMPLE] for i in range(0, len(text), TOKENIZER_SAMPLE)]
    stories = make_demo_corpus(n_train=s.n_domain, n_repeated=0, n_heldout=0, n_canaries=0,
                               sentences=s.story_sentences, seed=_TOKENIZER_SEED).train
    canaries = draw_canaries(32, s.canary_digits, _TOKENIZER_SEED)
    return train_tokenizer(samples + stories + canaries, vocab_size=s.vocab_size, model_max_length=1 << 30)


@dataclass
class Scenario3Data:
    """One seed's rows.

    ``general``: unique windows of the general text, trained once; ``general_heldout``: windows
    never trained on; ``domain``: the second domain's repeated sequences; ``domain_heldout``:
    sequences of the domain never trained on (what a model learns of the domain, and what
    dedup should lose); ``canaries``: planted secrets, repeated like the domain;
    ``repeated_eval``: the repeated sequences the memorization metrics score (the first
    ``eval_repeated`` of ``domain``).
    """

    tokenizer: object
    general: list[list[int]]
    general_heldout: list[list[int]]
    domain: list[list[int]]
    domain_heldout: list[list[int]]
    canaries: list[SecretRecord]
    repeated_eval: list[list[int]]
    source: str

    def sources(self, repeats: int) -> list[Source]:
        """General windows once, each domain sequence and each canary ``repeats`` times."""
        return [Source(self.general), Source(self.domain, repeats), Source([c.tokens for c in self.canaries], repeats)]

    def near_duplicate_sources(self, swapper, copies: int, rate: float, seed: int) -> list[Source]:
        """General windows once and ``copies`` near-duplicate copies of each domain sequence (``rate`` of its
        tokens swapped, keyed by the sequence; see ``near_duplicates``); no canaries."""
        return [Source(self.general), swapper.copies(self.domain, copies, rate, seed)]


def build_scenario3(text: str, source: str, tokenizer, s, seed: int) -> Scenario3Data:
    """Windows split with ``seed``, stories drawn with ``30_000 + seed``, canaries with ``10_000 + seed``."""
    split = split_text_windows(text, tokenizer, window=s.window, n_repeated=0, n_heldout=s.n_general_heldout,
                               seed=seed)
    stories = make_demo_corpus(n_train=0, n_repeated=s.n_domain, n_heldout=s.n_domain_heldout, n_canaries=0,
                               sentences=s.story_sentences, seed=30_000 + seed)
    domain = [framed(tokenizer, t) for t in stories.repeated]
    short = min(len(r) for r in domain)
    if short < s.prefix_len + s.suffix_len:
        raise ValueError(f"A story is only {short} tokens; extraction needs prefix_len + suffix_len = "
                         f"{s.prefix_len + s.suffix_len}. Raise story_sentences or shorten the prefix / suffix.")
    texts = draw_canaries(s.n_canaries, s.canary_digits, 10_000 + seed)
    canaries = encode_canaries(texts, [framed(tokenizer, t) for t in texts], tokenizer)
    n_eval = len(domain) if s.eval_repeated is None else min(s.eval_repeated, len(domain))
    return Scenario3Data(tokenizer=tokenizer, general=split.train, general_heldout=split.heldout, domain=domain,
                         domain_heldout=[framed(tokenizer, t) for t in stories.heldout], canaries=canaries,
                         repeated_eval=domain[:n_eval], source=source)
