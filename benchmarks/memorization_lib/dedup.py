"""The deduplication baselines: exact dedup and near-duplicate dedup with MinHash LSH, and what each finds.

Both group the rows of a training stream into clusters and keep the first row of each cluster.
Exact dedup clusters identical token rows. Near-duplicate dedup follows the recipe used on LM
training data (Lee et al. 2022, "Deduplicating Training Data Makes Language Models Better",
after Broder 1997): each row's text is cut into word 5-gram shingles, MinHash signatures
(``datasketch``, 128 permutations) go into an LSH index tuned to a Jaccard similarity of 0.8,
and rows that land in a common LSH bucket are joined, transitively, into one cluster.

``dedup_report`` compares the clusters with where the rows really came from (``origins``: the
row each one is an exact or near copy of) and says what a dedup found and what it missed.
"""

from __future__ import annotations

from dataclasses import dataclass

from memsinks._memorization_corpus import Source, stream_rows


def exact_clusters(rows: list[list[int]]) -> list[int]:
    """Cluster label of each row: the index of the first row with exactly the same tokens."""
    first: dict[tuple, int] = {}
    return [first.setdefault(tuple(r), i) for i, r in enumerate(rows)]


@dataclass
class MinHashSettings:
    """Near-duplicate dedup as in the deduplication literature: word ``ngram``-shingles, Jaccard ``threshold``."""

    threshold: float = 0.8
    ngram: int = 5
    num_perm: int = 128
    seed: int = 1


def shingles(text: str, n: int) -> set[bytes]:
    """The word ``n``-grams of ``text`` (split on white space); a text of fewer than ``n`` words is one shingle."""
    words = text.split()
    if len(words) <= n:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i:i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b|: the similarity MinHash estimates (1.0 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 1.0


def minhash_clusters(texts: list[str], settings: MinHashSettings = MinHashSettings()) -> list[int]:
    """Cluster label of each text (the index of its cluster's first text) from MinHash LSH candidates.

    Identical texts have identical signatures and so always share a cluster; they are hashed once.
    """
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError as err:
        raise ImportError("The near-duplicate dedup baseline needs datasketch: pip install 'memsinks[benchmarks]' "
                          "(or make install-test).") from err
    if not 0.0 < settings.threshold < 1.0:
        raise ValueError(f"MinHash threshold must be in (0, 1); got {settings.threshold}.")
    first: dict[str, int] = {}
    for i, t in enumerate(texts):
        first.setdefault(t, i)
    distinct = sorted(first.values())
    lsh = MinHashLSH(threshold=settings.threshold, num_perm=settings.num_perm)
    signatures = {}
    for i in distinct:
        m = MinHash(num_perm=settings.num_perm, seed=settings.seed)
        m.update_batch(sorted(shingles(texts[i], settings.ngram)))
        signatures[i] = m
        lsh.insert(i, m)
    parent = {i: i for i in distinct}

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i in distinct:
        for j in lsh.query(signatures[i]):
            a, b = root(i), root(j)
            if a != b:
                parent[max(a, b)] = min(a, b)  # the root is the cluster's first text
    return [root(first[t]) for t in texts]


def keep_first(rows: list[list[int]], clusters: list[int]) -> list[Source]:
    """The deduplicated stream: the first row of each cluster, in stream order, as one source written once."""
    if len(rows) != len(clusters):
        raise ValueError(f"{len(rows)} rows and {len(clusters)} cluster labels; give one label per row.")
    return [Source([r for i, r in enumerate(rows) if clusters[i] == i])]


def deduplicate(sources: list[Source], method: str, tokenizer=None,
                minhash: MinHashSettings = MinHashSettings()) -> tuple[list[Source], list[int]]:
    """The stream of ``sources`` deduplicated with ``method`` ("exact" or "minhash"), and each row's cluster.

    MinHash works on text, so it needs the ``tokenizer`` that made the rows (each row is decoded).
    """
    rows = stream_rows(sources)
    if method == "exact":
        clusters = exact_clusters(rows)
    elif method == "minhash":
        if tokenizer is None:
            raise ValueError("MinHash dedup compares texts: pass the tokenizer that made the rows.")
        clusters = minhash_clusters(tokenizer.batch_decode(rows), minhash)
    else:
        raise ValueError(f"Unknown dedup method {method!r}; choose 'exact' or 'minhash'.")
    return keep_first(rows, clusters), clusters


def cluster_ids(sources: list[Source], clusters: list[int]) -> list[Source]:
    """The full stream, each row keyed by its cluster (content ID of the cluster's first row): cluster IDs for sinks."""
    import memsinks

    rows = stream_rows(sources)
    return [Source(rows, 1, [memsinks.content_id(rows[c]) for c in clusters])]


def dedup_report(clusters: list[int], origins: list[int], groups: dict[str, set[int]]) -> dict:
    """What a dedup found and missed, against the rows' true ``origins`` (one key per stream row).

    A row is redundant when an earlier row has the same origin. A removed row (not first in its
    cluster) is a *found* copy when its cluster's first row has its origin, and a *false merge*
    (distinct text lost) otherwise. ``groups``: name -> the origin keys of a part of the corpus
    (e.g. "repeated", "general"); each gets its own counts, and for the repeated parts the mean
    number of copies of each origin left in the deduplicated stream. A part with no rows in the
    stream is left out.
    """
    if len(clusters) != len(origins):
        raise ValueError(f"{len(clusters)} cluster labels and {len(origins)} origins; give one of each per row.")
    out = {}
    for name, keys in groups.items():
        rows = [i for i, o in enumerate(origins) if o in keys]
        if not rows:
            continue
        seen: set[int] = set()
        redundant = 0
        for i in rows:
            redundant += origins[i] in seen
            seen.add(origins[i])
        removed = [i for i in rows if clusters[i] != i]
        found = sum(origins[clusters[i]] == origins[i] for i in removed)
        left = {k: 0 for k in seen}
        for i in rows:
            if clusters[i] == i:
                left[origins[i]] += 1
        out[name] = {
            "rows": len(rows), "redundant_copies": redundant, "removed": len(removed), "found": found,
            "missed": redundant - found, "false_merges": len(removed) - found,
            "recall": found / redundant if redundant else None,
            "copies_left_per_origin": sum(left.values()) / len(left) if left else 0.0,
        }
    return out
