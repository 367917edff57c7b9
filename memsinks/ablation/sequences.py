"""Sets of token sequences read from files, with the sequence IDs training gave them.

The tools measure a model with its sinks on in ``own`` mode, and delete documents by their
sinks, so every sequence must carry exactly the ID it was trained with. Two kinds of ID exist
(``memsinks.assign_sequence_ids``) and a text cannot tell which one training used, so unless
the file states the ID the caller must name the kind:

* ``"content"``: the hash of the sequence's tokens, ``memsinks.content_id(tokens)``. The
  tokens must be exactly the ones trained on: texts are tokenized with ``tokenizer(text)``,
  and ``wrap_eos`` adds the ``[eos] + tokens + [eos]`` framing ``memsinks demo`` trains with;
  for any other framing give the tokens themselves (``input_ids``).
* ``"key"``: ``memsinks.key_id(key)`` of a document, author or source key.

File formats (the same fields as ``memsinks.probes.inputs``): ``.jsonl`` with one object per
line holding ``"text"`` or ``"input_ids"``, and optionally the ID outright as
``"sequence_id"`` or as a document key ``"doc_id"``; any other file is plain text with one
record per line: a text, or, with ``id_kind="key"``, a document key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import memsinks
from memsinks._io import read_text
from memsinks.probes.inputs import document_id, read_records, sequence_id, token_list

ID_KINDS = ("content", "key")


@dataclass
class SequenceSet:
    """Records of a file in order: their training IDs, and their tokens and texts where they have them.

    ``sequences`` and ``texts`` are parallel to ``ids`` when every record has tokens (a file
    of document keys has none: ``sequences`` is then empty). ``texts[i]`` is None for a
    record given as ``input_ids``. ``origins[i]`` is the record's ``file:line``, for messages.
    """

    sequences: list[list[int]] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    source: str = ""
    texts: list[str | None] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, keep: list[bool]) -> "SequenceSet":
        pick = [i for i, k in enumerate(keep) if k]
        return SequenceSet([self.sequences[i] for i in pick] if self.sequences else [], [self.ids[i] for i in pick],
                           self.source, [self.texts[i] for i in pick] if self.texts else [],
                           [self.origins[i] for i in pick] if self.origins else [])

    def where(self, index: int) -> str:
        """The file and line of sequence ``index`` (else its position in the set)."""
        return self.origins[index] if self.origins else f"{self.source or 'sequence'}[{index}]"


def encode_text(text: str, tokenizer, wrap_eos: bool = False) -> list[int]:
    """Tokens of ``text`` as ``tokenizer(text)`` gives them, framed by EOS on both sides if ``wrap_eos``."""
    tokens = [int(t) for t in tokenizer(text)["input_ids"]]
    if wrap_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("wrap_eos needs a tokenizer with an EOS token.")
        tokens = [tokenizer.eos_token_id] + tokens + [tokenizer.eos_token_id]
    return tokens


def load_sequence_set(
    path: str | os.PathLike,
    tokenizer=None,
    id_kind: str | None = None,
    wrap_eos: bool = False,
    need_tokens: bool = True,
    what: str = "sequences",
) -> SequenceSet:
    """Read a file of sequences and give each the ID training gave it.

    Args:
        tokenizer: turns texts into tokens (not needed for ``input_ids`` records).
        id_kind: ``"content"`` or ``"key"``, for records that state no ``sequence_id``/``doc_id``.
        wrap_eos: frame each text's tokens with EOS (as ``memsinks demo`` did in training).
        need_tokens: False for a set used only for its IDs (for example a file of document keys).
        what: the file's role, for messages (``"--members"``).
    """
    if id_kind is not None and id_kind not in ID_KINDS:
        raise ValueError(f"id_kind must be one of {ID_KINDS}; got {id_kind!r}.")
    path = os.fspath(path)
    out = SequenceSet(source=path)
    # a plain-text line is the key itself for key IDs, else a text
    for line, record in read_records(path, what, text_field="doc_id" if id_kind == "key" else "text"):
        where = f"{path}:{line}"
        tokens = _tokens_of(record, tokenizer, wrap_eos, where)
        sid = _id_of(record, tokens, id_kind, where)
        if tokens is None and need_tokens:
            hint = " With key IDs, give .jsonl records with both \"text\" and \"doc_id\"." if id_kind == "key" else ""
            raise ValueError(f"{where} has no \"text\" or \"input_ids\" to measure.{hint}")
        if tokens is not None:
            out.sequences.append(tokens)
            out.texts.append(record.get("text"))
            out.origins.append(where)
        out.ids.append(sid)
    if out.sequences and len(out.sequences) != len(out.ids):
        raise ValueError(f"{path}: some records have tokens and others do not; give all or none.")
    return out


def _id_of(record: dict, tokens: list[int] | None, id_kind: str | None, where: str) -> int:
    if "sequence_id" in record:
        return sequence_id(record["sequence_id"], f"{where}: sequence_id")
    if "doc_id" in record:
        if id_kind == "content":
            raise ValueError(f"{where} has a \"doc_id\" (a key ID) but the ID kind was given as 'content'.")
        return document_id(record["doc_id"], f"{where}: doc_id")
    if id_kind is None:
        raise ValueError(
            f"{where} states no ID (\"sequence_id\" or \"doc_id\"), and which kind of ID training used was not said. "
            "Name it: 'content' if training hashed the tokens (memsinks.assign_sequence_ids(ds), the default), or "
            "'key' if it hashed a document key (assign_sequence_ids(ds, from_column=...)); on the command line, "
            "--id-kind content|key."
        )
    if id_kind == "key":
        raise ValueError(f"{where}: key IDs need a \"doc_id\" field (the document key training hashed).")
    if tokens is None:
        raise ValueError(f"{where}: a content ID hashes the tokens, and this record has no \"text\" or \"input_ids\".")
    return memsinks.content_id(tokens)


def _tokens_of(record: dict, tokenizer, wrap_eos: bool, where: str) -> list[int] | None:
    if "input_ids" in record:
        try:
            return token_list(record["input_ids"], f"{where}: input_ids")
        except TypeError as err:
            raise ValueError(str(err)) from None
    text = record.get("text")
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"{where}: text must be a string; got {type(text).__name__}.")
    if tokenizer is None:
        raise ValueError(f"{where} is text, but there is no tokenizer to tokenize it (give input_ids instead).")
    tokens = encode_text(text, tokenizer, wrap_eos)
    if not tokens:
        raise ValueError(f"{where}: the text tokenizes to no tokens at all.")
    return tokens


def chunk_text_file(path: str | os.PathLike, tokenizer, length: int, max_chunks: int | None = None) -> list[list[int]]:
    """Consecutive windows of ``length`` tokens of a whole text file (held-out text for perplexity)."""
    from memsinks.data import chunk_tokens

    path = os.fspath(path)
    text = read_text(path, "held-out text")
    chunks = chunk_tokens(tokenizer(text, verbose=False)["input_ids"], length)  # long text: no length warning
    if not chunks:
        raise ValueError(f"{path} has fewer than {length} tokens; give a longer held-out text.")
    return chunks[:max_chunks] if max_chunks else chunks
