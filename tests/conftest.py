"""Tiny models of each supported family, built from configs (no downloads)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

# one thread: tiny models gain little from more, and tests that start subprocesses would oversubscribe
torch.set_num_threads(1)


def tiny_model(family: str, vocab: int = 128, hidden: int = 32, layers: int = 2, inner: int = 64, seed: int = 0):
    from transformers import (
        GPT2Config, GPT2LMHeadModel, GPTNeoConfig, GPTNeoForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM,
        LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "gpt2":
        cfg = GPT2Config(n_layer=layers, n_embd=hidden, n_head=2, n_inner=inner, n_positions=256, **common)
        return GPT2LMHeadModel(cfg)
    if family == "gpt_neo":
        cfg = GPTNeoConfig(num_layers=layers, hidden_size=hidden, num_heads=2, intermediate_size=inner,
                           attention_types=[[["global", "local"], layers // 2]], max_position_embeddings=256, **common)
        return GPTNeoForCausalLM(cfg)
    if family == "gpt_neox":
        cfg = GPTNeoXConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=2, intermediate_size=inner,
                            max_position_embeddings=256, **common)
        return GPTNeoXForCausalLM(cfg)
    llama_like = dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=inner, max_position_embeddings=256, **common)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**llama_like))
    if family == "mistral":
        return MistralForCausalLM(MistralConfig(**llama_like))
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**llama_like))
    raise ValueError(family)


FAMILIES = ["gpt2", "gpt_neo", "gpt_neox", "llama", "mistral", "qwen2"]


@pytest.fixture
def shakespeare_path():
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} not present (it lies beside the checkout in ../shared/data)")
    return SHAKESPEARE


def run_python(code: str, env: dict | None = None, cwd: str | None = None) -> str:
    """Run ``code`` in a fresh interpreter and return its stdout (raises on failure)."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def token_batch(vocab: int = 128, shape: tuple[int, int] = (3, 12), seed: int = 0) -> torch.Tensor:
    """Random token IDs in [1, vocab), int64 ``shape``, the same for the same seed."""
    return torch.randint(1, vocab, shape, generator=torch.Generator().manual_seed(seed))
