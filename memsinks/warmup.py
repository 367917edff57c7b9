"""The sinks' warm-up: for the first training forward passes only the sinks learn.

A pretrained model's shared units memorize a repeated record within a few steps; sinks that
start from nothing lose that race. During the warm-up (``SinksConfig.sink_warmup_steps``
training forward passes) every trainable parameter outside the sinks gets a zero gradient, so
what the model sees first is taken by the sinks; afterwards the sinks already predict it and
the shared units get little of its gradient. With centered masks (``SinksConfig.centered_masks``)
what is common to all sequences cancels across the pool, so the warm-up does not move the task
itself into the sinks.

Progress is a buffer of the first sink layer (``sink_warmup_progress``), so it is saved in
checkpoints and a resumed run does not warm up again (stock transformers, loading such a
checkpoint, reports this scalar as an unexpected key and ignores it). Zeroing is done by gradient hooks,
installed at the first training forward and removed when the warm-up ends; they work under
gradient checkpointing, DDP and gradient accumulation alike. Under DP-SGD (``memsinks.make_private``)
the noisy gradients of the shared parameters are zeroed before each update instead. The step that routes
memorized tokens (``memsinks.memorized_tokens``) does not compute those gradients at all while
warming up: its shipped pass runs without gradient and the shared parameters get zeros. The count
is of forward passes: with gradient accumulation, or a DP-SGD batch split into physical
batches, one optimizer step counts several. Under Adam the zeroed parameters'
moments stay zero meanwhile, so their first steps after the warm-up are smaller than usual; an
optimizer's decoupled weight decay (AdamW with ``weight_decay > 0``; the Trainer's default is 0)
still shrinks them during the warm-up.
"""

from __future__ import annotations

import torch
from torch import nn

from memsinks.sink_slices import SinkSlice, sink_slices

PROGRESS_BUFFER = "sink_warmup_progress"


class SinkWarmup:
    """Counts training forwards in ``holder``'s buffer and zeroes non-sink gradients until ``steps`` have run."""

    def __init__(self, model: nn.Module, holder: nn.Module, steps: int):
        self.model = model
        self.holder = holder
        self.steps = steps
        self.active = False
        self.finished = False
        self._hooks: list = []
        holder.register_buffer(PROGRESS_BUFFER, torch.zeros((), dtype=torch.long), persistent=True)

    @property
    def progress(self) -> int:
        return int(getattr(self.holder, PROGRESS_BUFFER))

    def on_training_forward(self) -> None:
        """Called at each forward in training mode with gradients on: count it, and warm up or stop."""
        if self.finished:
            return
        done = self.progress
        self.active = done < self.steps
        if not self.active:
            self._remove_hooks()
            self.finished = True
            return
        getattr(self.holder, PROGRESS_BUFFER).fill_(done + 1)
        if not self._hooks:
            self._install_hooks()

    def _install_hooks(self) -> None:
        slices = {id(s.param): s for s in sink_slices(self.model)}
        for p in self.model.parameters():
            if not p.requires_grad:
                continue
            piece = slices.get(id(p))
            if piece is not None and piece.dim is None:
                continue
            self._hooks.append(p.register_hook(self._gradient_filter(piece)))

    def _gradient_filter(self, piece: SinkSlice | None):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            if not self.active:
                return grad
            return torch.zeros_like(grad) if piece is None else piece.keep(grad)

        return hook

    def zero_shared_grads(self) -> None:
        """While warming up, zero the ``.grad`` of every parameter outside the sinks.

        For optimizers whose gradients do not come through autograd hooks: under DP-SGD the
        clipper computes per-example gradients itself, and this runs after the noise is added,
        before the update (a post-processing of the private gradient).
        """
        if not self.active:
            return
        slices = {id(s.param): s for s in sink_slices(self.model)}
        for p in self.model.parameters():
            piece = slices.get(id(p))
            if p.grad is None or (piece is not None and piece.dim is None):
                continue
            p.grad = torch.zeros_like(p.grad) if piece is None else piece.keep(p.grad)

    def close(self) -> None:
        """Remove the gradient hooks (the sinks are being removed)."""
        self._remove_hooks()
        self.finished = True

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
