"""A tiny GPT-2 with sinks, trained for a few seconds to memorize two planted canaries and a few stories.

Trained once per test process (the result is cached) and saved, with its tokenizer, as a
checkpoint the ablation tools can open. Small ``p_mem`` keeps the two canaries' sink subsets
mostly apart, so deleting one leaves the other's memorization in place.

``check_in_process`` stands in for the export's check in a fresh process in tests about other
things (it costs seconds per export).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import memsinks
from memsinks.corpus import make_demo_corpus, train_tokenizer

SUFFIX = 8  # a canary's secret: six digits, the full stop and the closing EOS


@dataclass
class Trained:
    checkpoint: Path
    tokenizer: object
    canary_texts: list[str]
    canaries: list[list[int]]  # token lists as trained: [eos] + tokens + [eos]
    story_texts: list[str]
    stories: list[list[int]]
    heldout_texts: list[str]
    heldout: list[list[int]]

    def canary_windows(self) -> tuple[list[list[int]], list[int], int]:
        """Canaries cut to a common length (so one prefix length fits all), their training IDs, the prefix length."""
        n = min(len(c) for c in self.canaries)
        return [c[len(c) - n:] for c in self.canaries], [memsinks.content_id(c) for c in self.canaries], n - SUFFIX


@functools.lru_cache(maxsize=None)
def trained_canary_model(steps: int = 150, seed: int = 0) -> Trained:
    from transformers import GPT2Config, GPT2LMHeadModel

    corpus = make_demo_corpus(n_train=200, n_repeated=4, n_heldout=16, n_canaries=2, sentences=2, seed=seed)
    tok = train_tokenizer(corpus.train + corpus.repeated + corpus.canaries, vocab_size=256)
    eos = tok.eos_token_id

    def enc(text: str) -> list[int]:
        return [eos] + tok(text)["input_ids"] + [eos]

    canaries = [enc(t) for t in corpus.canaries]
    stories = [enc(t) for t in corpus.repeated]
    data = [enc(t) for t in corpus.train] + (canaries + stories) * 30
    ids = [memsinks.content_id(s) for s in data]
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_inner=256, n_positions=128, vocab_size=len(tok),
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=eos, eos_token_id=eos,
                        pad_token_id=eos)
    model = memsinks.add_sinks(GPT2LMHeadModel(config), memsinks.SinksConfig(p_gen=0.5, p_mem=0.1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    collate = memsinks.SinksDataCollator(tok)
    rng = np.random.default_rng(seed)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains faster on one thread than on two shared ones
    try:
        for _ in range(steps):
            batch = collate([{"input_ids": data[i], "sequence_ids": ids[i]} for i in rng.choice(len(data), 16)])
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    root = Path(tempfile.mkdtemp(prefix="memsinks-ablation-test-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    model.save_pretrained(root / "ckpt")
    tok.save_pretrained(root / "ckpt")
    return Trained(root / "ckpt", tok, list(corpus.canaries), canaries, list(corpus.repeated), stories,
                   list(corpus.heldout), [enc(t) for t in corpus.heldout])


def check_in_process(model_dir, input_ids, expected, dtype) -> float:
    """``export.verify_plain_export`` in this process: stock loading of ``model_dir`` must give ``expected``."""
    from transformers import AutoModelForCausalLM

    from memsinks.ablation import export as export_mod

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        diff = float((model(input_ids).logits - expected).abs().max())
    assert diff <= export_mod.logit_tolerance(dtype, expected)
    return diff
