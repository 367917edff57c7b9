"""What the bad-input tests of the tools share: a tiny checkpoint with sinks and a short context, input files,
and the checks that a refused or failed run left every input byte-identical and nothing behind."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

import memsinks
from memsinks.corpus import make_demo_corpus, train_tokenizer

CONTEXT = 48  # n_positions of the tiny model: long members are easy to make


@dataclass
class Tool:
    checkpoint: Path
    tokenizer: object
    texts: list[str]  # one-line texts, each longer than 16 tokens and shorter than CONTEXT
    long_text: str  # longer than CONTEXT tokens


@functools.lru_cache(maxsize=None)
def _saved() -> tuple[Path, object, tuple[str, ...]]:
    from transformers import GPT2Config, GPT2LMHeadModel

    corpus = make_demo_corpus(n_train=24, n_repeated=2, n_heldout=8, n_canaries=1, sentences=1, canary_digits=3)
    tok = train_tokenizer(corpus.train + corpus.heldout, vocab_size=300)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_inner=64, n_positions=CONTEXT, vocab_size=len(tok),
                        bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = memsinks.add_sinks(GPT2LMHeadModel(config), memsinks.SinksConfig(p_gen=0.5))
    root = Path(tempfile.mkdtemp(prefix="memsinks-bad-input-"))
    import atexit

    atexit.register(shutil.rmtree, root, ignore_errors=True)
    model.eval().save_pretrained(root / "ckpt")
    tok.save_pretrained(root / "ckpt")
    texts = tuple(t for t in corpus.train if 16 < len(tok(t)["input_ids"]) < CONTEXT - 8)
    return root / "ckpt", tok, texts


def tool(tmp_path: Path) -> Tool:
    """A fresh copy of the tiny checkpoint in ``tmp_path/ckpt`` (tests may damage it), with texts to probe."""
    saved, tok, texts = _saved()
    shutil.copytree(saved, tmp_path / "ckpt")
    long_text = " ".join(texts)
    assert len(tok(long_text)["input_ids"]) > CONTEXT
    return Tool(tmp_path / "ckpt", tok, list(texts), long_text)


def write_lines(path: Path, lines) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def write_jsonl(path: Path, records) -> Path:
    return write_lines(path, [json.dumps(r) for r in records])


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (files or folders)."""
    out = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in paths:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_clean(root: Path, before: dict[str, str] | None = None) -> None:
    """Every file recorded in ``before`` is byte-identical, and ``root`` holds no temporary, partial or empty file."""
    if before is not None:
        assert snapshot(*[Path(p) for p in before]) == before
    for p in root.rglob("*"):
        name = p.name
        assert ".partial" not in name and ".tmp" not in name and not name.startswith(("memsinks-verify-",
                                                                                        "memsinks-pickle-")), p
        if p.is_file():
            assert p.stat().st_size > 0, f"{p} is empty"
