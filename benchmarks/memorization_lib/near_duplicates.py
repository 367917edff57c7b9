"""Near-duplicate copies of token rows, and the sequence IDs a copy can be trained under.

Real corpora repeat text as near-duplicates: boilerplate, templates and mirrored pages whose
names, numbers and dates change from copy to copy. ``TokenSwapper`` makes such copies of a
token row: each copy keeps the row's length and all its tokens but a few, and each changed
position gets another token of the same kind (a digit for a digit, a capitalized word for a
capitalized word, a lowercase word for a lowercase word), the names and numbers first. Copies
are edited independently and are all distinct, so two copies usually differ from each other in
about twice as many positions as each differs from the row they came from, and exact dedup
finds none of them.

Which sequence ID a copy is trained under decides whether sinks can hold it: the content ID
of the copy's own tokens differs from copy to copy (every copy gets its own sinks, and what
the copies share is learned by the shared units), while a key that survives the edits (the
source the copy came from; ``source_ids``) sends every copy to the same sinks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import memsinks
from memsinks._memorization_corpus import Source

from .dedup import jaccard, shingles

KINDS = ("digit", "capitalized", "lowercase")
_FIRST_CHOICE = ("digit", "capitalized")  # names, numbers and dates
_TRIES = 20  # draws of an already-made copy before a row's remaining copies get one edit more


def _kind(token: str) -> str | None:
    """The kind of a byte-level BPE token: one digit, or a word start ('Ġ' then letters only)."""
    if len(token) == 1 and token in "0123456789":
        return "digit"
    if len(token) > 1 and token[0] == "Ġ" and token[1:].isascii() and token[1:].isalpha():
        return "capitalized" if token[1].isupper() else "lowercase"
    return None


@dataclass
class TokenSwapper:
    """Edits token rows by swapping tokens for others of the same kind.

    ``kinds``: token ID -> kind for every swappable token of the vocabulary; ``pools``: kind ->
    the token IDs of that kind (a swap draws from them uniformly).
    """

    kinds: dict[int, str]
    pools: dict[str, list[int]]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "TokenSwapper":
        """The swappable tokens of a byte-level BPE tokenizer (``memsinks.corpus.train_tokenizer``'s kind)."""
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        kinds = {i: k for i, t in enumerate(vocab) if (k := _kind(t)) is not None}
        pools: dict[str, list[int]] = {k: [] for k in KINDS}
        for i, k in kinds.items():
            pools[k].append(i)
        small = [k for k in KINDS if len(pools[k]) < 2]
        if small:
            raise ValueError(f"The tokenizer has fewer than two tokens of kind(s) {small}; near-duplicate copies swap "
                             "tokens within a kind. Use a byte-level BPE tokenizer with digits split "
                             "(memsinks.corpus.train_tokenizer).")
        return cls(kinds=kinds, pools=pools)

    def edits_for(self, row: list[int], rate: float) -> int:
        """Positions a copy of ``row`` changes: ``rate`` of its tokens, rounded, at least 1."""
        return max(1, round(rate * len(row)))

    def copy(self, row: list[int], edits: int, rng: random.Random) -> list[int]:
        """``row`` with ``edits`` positions swapped, drawn among digits and capitalized words first.

        Raises when the row has fewer than ``edits`` swappable tokens.
        """
        first = [i for i, t in enumerate(row) if self.kinds.get(t) in _FIRST_CHOICE]
        rest = [i for i, t in enumerate(row) if self.kinds.get(t) == "lowercase"]
        if len(first) + len(rest) < edits:
            raise ValueError(f"A row of {len(row)} tokens has {len(first) + len(rest)} swappable tokens; {edits} edits "
                             "were asked for. Lower the near-duplicate rate.")
        positions = rng.sample(first, min(edits, len(first)))
        if len(positions) < edits:
            positions += rng.sample(rest, edits - len(positions))
        out = list(row)
        for i in positions:
            pool = self.pools[self.kinds[row[i]]]
            swap = rng.choice(pool)
            while swap == row[i]:
                swap = rng.choice(pool)
            out[i] = swap
        return out

    def copies(self, rows: list[list[int]], n: int, rate: float, seed: int) -> Source:
        """``n`` copies of every row, each edited independently at ``rate``, keyed by the row they came from.

        The copies of a row differ from it and from each other: two equal copies would be an exact
        duplicate, which exact dedup finds and this variant is not about. A row that has run out
        of new variants at its number of edits (``_TRIES`` draws in a row gave a copy already
        made) gets one edit more for its remaining copies. Returns one ``Source`` (written once)
        whose ``ids`` are the content ID of each copy's original row: the key that survives the
        edits.
        """
        rng = random.Random(seed)
        out, ids = [], []
        for row in rows:
            key = memsinks.content_id(row)
            edits = self.edits_for(row, rate)
            made = {tuple(row)}
            for _ in range(n):
                copy, tries = self.copy(row, edits, rng), 1
                while tuple(copy) in made:
                    if tries % _TRIES == 0:
                        edits += 1
                    copy, tries = self.copy(row, edits, rng), tries + 1
                made.add(tuple(copy))
                out.append(copy)
                ids.append(key)
        return Source(out, 1, ids)


def near_duplicate_facts(rows: list[list[int]], copies: Source, rate: float, tokenizer, ngram: int) -> dict:
    """What a near-duplicate stream is like: copies per row, the edit rate, the mean number of tokens a copy
    differs from its source in, and the mean Jaccard similarity of word ``ngram``-shingles between each
    copy's text and its source row's (what MinHash dedup estimates). ``copies``: ``TokenSwapper.copies(rows,
    ...)``, in its order."""
    n = len(copies.rows) // len(rows)
    edits = [sum(a != b for a, b in zip(c, rows[i // n])) for i, c in enumerate(copies.rows)]
    texts, sources = tokenizer.batch_decode(copies.rows), tokenizer.batch_decode(rows)
    similarity = [jaccard(shingles(t, ngram), shingles(sources[i // n], ngram)) for i, t in enumerate(texts)]
    return {"copies": n, "near_duplicate_rate": rate, "edits_per_copy": sum(edits) / len(edits),
            "shingle_jaccard_to_source": sum(similarity) / len(similarity)}


def source_ids(sources: list[Source]) -> list[Source]:
    """Every source with IDs: its own where given (the source key of near-duplicates), else each row's content ID."""
    return [s if s.ids is not None else Source(s.rows, s.repeats, [memsinks.content_id(r) for r in s.rows])
            for s in sources]


def content_ids(sources: list[Source]) -> list[Source]:
    """Every source without IDs: each row, near-duplicate copies included, trained under its own content ID."""
    return [Source(s.rows, s.repeats) for s in sources]


def origins(sources: list[Source]) -> list[int]:
    """For each row of the stream (``stream_rows`` order), the key of the row it is a copy of (exact or near)."""
    return [key for s in source_ids(sources) for _ in range(s.repeats) for key in s.ids]
