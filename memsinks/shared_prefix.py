"""The blocks below the lowest sink block compute the same with the sinks on and dropped: run them once.

A training forward that routes memorized tokens (``memsinks.memorized_tokens``) runs the model
with the sinks dropped and again with each sequence's own sinks on. When the sinks sit only in the
upper blocks (``SinksConfig.layers``), everything below the lowest of them gets the same input and
holds no sink, so its output is the same in both passes. ``recording`` keeps each lower block's
output during the first pass; ``replaying`` makes each lower block return that output, detached,
without computing anything, for the passes that follow, which then cost only the upper blocks and
the head. The outputs are detached because those passes train the sinks alone: no gradient is
needed below the lowest sink block.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
from torch import nn

Shipped = TypeVar("Shipped")
Sinks = TypeVar("Sinks")


def _detached(value: Any) -> Any:
    """``value`` with every tensor in it (a block's output: a tensor, or a tuple of them) detached."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    return value


@contextlib.contextmanager
def recording(blocks: Sequence[nn.Module]) -> Iterator[list]:
    """Inside the block, each of ``blocks``' outputs is kept (detached) in the yielded list, in block order.

    A block called more than once keeps its last output, so the list holds one entry per block.
    """
    outputs: list = [None] * len(blocks)

    def keep(i: int):
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            outputs[i] = _detached(output)
        return hook

    handles = [block.register_forward_hook(keep(i)) for i, block in enumerate(blocks)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


class _Replay:
    """A block's stand-in forward: whatever it is called with, the output recorded earlier."""

    def __init__(self, output: Any):
        self.output = output

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.output


@contextlib.contextmanager
def replaying(blocks: Sequence[nn.Module], outputs: Sequence[Any]) -> Iterator[None]:
    """Inside the block, each of ``blocks`` returns its entry of ``outputs`` instead of computing.

    Raises ValueError when a block has no recorded output (it did not run in the recorded pass).
    """
    missing = [i for i, out in enumerate(outputs) if out is None]
    if missing or len(outputs) != len(blocks):
        raise ValueError(f"Blocks {missing} have no recorded output to replay; the pass that recorded them did not "
                         "run every block below the lowest sink block.")
    own = [block.__dict__.get("forward") for block in blocks]
    for block, out in zip(blocks, outputs):
        block.forward = _Replay(out)
    try:
        yield
    finally:
        for block, forward in zip(blocks, own):
            if forward is None:
                del block.forward
            else:
                block.forward = forward


def shipped_and_sinks_passes(
    shipped: Callable[[], Shipped],
    sinks: Callable[[], Sinks],
    drop_sinks: Callable[[], None],
    own_sinks: Callable[[], None],
    prefix: Sequence[nn.Module],
    shipped_first: bool = False,
) -> tuple[Shipped, Sinks]:
    """(``shipped()`` with the sinks dropped, ``sinks()`` with each sequence's own sinks on); the sinks end dropped.

    Without a ``prefix`` the sinks' passes run first (the router is on the own sinks when this is
    called), so that their graph is freed before the shipped pass builds its own; ``shipped_first``
    runs the shipped pass first anyway, for sinks' passes that read what it computed. With a prefix
    (the blocks below the lowest sink block, in order), the shipped pass runs first and records the
    prefix's outputs, and the sinks' passes replay them. Either way the sinks end dropped, so that a
    recomputation of the shipped pass under gradient checkpointing sees it as it ran.
    """
    if not prefix and not shipped_first:
        result = sinks()
        drop_sinks()
        return shipped(), result
    drop_sinks()
    with recording(prefix) as outputs:
        out = shipped()
    own_sinks()
    with replaying(prefix, outputs):
        result = sinks()
    drop_sinks()
    return out, result
