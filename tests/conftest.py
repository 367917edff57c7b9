"""Tiny models of each supported family, built from configs (no downloads)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

# one thread: tiny models gain little from more, and the two workers of `make test` (and the subprocesses tests
# start) share two cores, where extra threads spin against each other and slow the whole suite several times over
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Give every test the one thread, whatever an earlier test in this worker set."""
    torch.set_num_threads(1)


def tiny_model(family: str, vocab: int = 128, hidden: int = 32, layers: int = 2, inner: int = 64, seed: int = 0):
    """A tiny decoder of ``family`` (2 heads, one key/value head where the family has them, the library's dropout)."""
    from memsinks._small_decoder import DecoderShape, build_decoder

    shape = DecoderShape(family=family, n_layer=layers, n_embd=hidden, n_head=2, intermediate=inner, n_kv_heads=1,
                         dropout=None)
    return build_decoder(shape, vocab, seed=seed, token_id=0)


FAMILIES = ["gpt2", "gpt_neo", "gpt_neox", "llama", "mistral", "qwen2"]  # memsinks._small_decoder.FAMILIES


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


def run_benchmark(name: str, argv: list[str]):
    """``benchmarks/<name>.py``'s ``main(argv)`` in this process, on one thread, from the repository root (a fresh
    interpreter would spend seconds importing torch and transformers again); the caller's thread count is given back."""
    import importlib

    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    module = importlib.import_module(name)
    threads, cwd = torch.get_num_threads(), os.getcwd()
    os.chdir(REPO)
    try:
        return module.main(["--threads", "1", *argv])
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)


def token_batch(vocab: int = 128, shape: tuple[int, int] = (3, 12), seed: int = 0) -> torch.Tensor:
    """Random token IDs in [1, vocab), int64 ``shape``, the same for the same seed."""
    return torch.randint(1, vocab, shape, generator=torch.Generator().manual_seed(seed))


def take_grads(model) -> dict[str, torch.Tensor]:
    """name -> a copy of each parameter's ``.grad`` (zeros where None); the model's gradients are then cleared."""
    out = {n: (torch.zeros_like(p) if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out


def sink_pieces(model) -> dict:
    """name -> the sink slice of that parameter (``memsinks.sink_slices``), or None for a shared parameter."""
    from memsinks.sink_slices import sink_slices

    slices = {id(s.param): s for s in sink_slices(model)}
    return {n: slices.get(id(p)) for n, p in model.named_parameters()}
