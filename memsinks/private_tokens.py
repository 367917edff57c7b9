"""Marked private tokens train only the sinks: two passes inside one training forward.

With a ``private_mask`` (B, T) in the batch (1 = the token's content is private), the loss is
split by token: the public tokens' loss trains the model with its sinks dropped, exactly as it
will be shipped; the private tokens' loss, with each sequence's own sinks on, trains only the
sink parameters. Dropping the sinks then removes everything the model learned from the private
tokens, by construction rather than by a race between the shared units and the sinks, and the
shipped model is the one the public tokens trained: had the public pass run with the sinks on,
the shared units would learn to offset what the fast-learning sinks add, an offset that stays
in the shipped model once the sinks are gone (measured: the shipped model's loss on numbers
rose to about 15 nats per token). The public tokens therefore get no help from the sinks: a
repeated public span is memorized as in plain fine-tuning.

So the shipped model owes nothing to the sinks: with ``append`` placement, where dropping the
sinks leaves the pretrained architecture, it is exactly what plain fine-tuning gives with the
private tokens' labels set to -100, but for each batch's weight (the loss is divided by all its
labelled tokens, private ones included) and for gradient clipping, whose norm includes the sinks'
gradients. What the two passes add is the sinks' copy of the private content, which ``own``
mode reads back.

One backward cannot split a loss's gradient by parameter, so the training forward runs the
model twice on the same batch:

1. the private pass, own sinks on: the loss on the private tokens, differentiated at once
   (inside the forward, ``torch.autograd.grad``) with respect to the sink parameters only; no
   other parameter's gradient is computed or accumulated;
2. the public pass, sinks dropped: the forward with the private tokens' labels set to -100,
   whose output the caller gets back. Its loss carries the private pass's sink gradients into the
   caller's backward (``AddSinkGradients``), so the Trainer's single ``backward()`` gives the
   shared parameters the public tokens' gradient and the sinks both.

With the sinks only in the upper blocks (``SinksConfig.layers``) the public pass runs first, and
the private pass replays the outputs of the blocks below the lowest sink block instead of
computing them again (``memsinks.shared_prefix``).

The returned loss is the sum of the two parts weighted by their token counts (or both divided
by ``num_items_in_batch`` when the Trainer passes it): the mean over all labelled tokens, each
scored as it was trained, so gradient accumulation weighs batches as it always does.

The public pass never has a private token as its target, so a kind of token that is only ever
private (the digits, when every number is marked) is pushed down by every softmax and never up:
the shipped model learns that digits do not occur (measured on SmolLM2-135M: unseen records'
secrets cost 6.7 nats per token, against 3.3 after plain fine-tuning).
``SinksConfig.private_token_target="batch_marginal"`` gives the public pass, at each position
whose next token is private, the cross-entropy against the micro-batch's private tokens pooled
into one distribution (``batch_marginal_loss``): the shipped model keeps "a digit comes here"
without learning which digit a record has. It is added to the gradient only; the loss value
returned is unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from memsinks.shared_prefix import shipped_and_sinks_passes
from memsinks.sink_slices import SinkSlice

IGNORE_INDEX = -100


class AddSinkGradients(torch.autograd.Function):
    """``loss_public + private_value`` whose backward also hands ``grads`` to ``params``.

    Forward: (public loss, private loss value, n, *grads, *params, *zeroed) -> scalar, ``n``
    grads for the first ``n`` params. Backward: the incoming gradient goes to the public loss
    unchanged, ``g * grad_i`` to each sink parameter (the private pass's gradient, scaled as the
    public part is), and a zero gradient to each of ``zeroed``: the parameters that learn nothing
    from this batch when the public loss was computed without gradient (the sinks' warm-up).
    """

    @staticmethod
    def forward(ctx, loss_public, private_value, n, *grads_and_params):
        ctx.n = n
        ctx.save_for_backward(*grads_and_params[:n], *grads_and_params[2 * n:])
        return loss_public + private_value

    @staticmethod
    def backward(ctx, grad_out):
        grads, zeroed = ctx.saved_tensors[:ctx.n], ctx.saved_tensors[ctx.n:]
        public = grad_out if ctx.needs_input_grad[0] else None
        return ((public, None, None) + (None,) * ctx.n + tuple(grad_out * g for g in grads)
                + tuple(torch.zeros_like(p) for p in zeroed))


@contextlib.contextmanager
def non_reentrant_checkpointing(model: nn.Module) -> Iterator[None]:
    """Make gradient checkpointing non-reentrant for the block.

    A reentrant checkpoint runs its own ``backward`` during recomputation, which would
    accumulate the private loss's gradient into every parameter and cannot be combined with
    ``torch.autograd.grad``; the non-reentrant kind only recomputes activations.
    """
    from torch.utils.checkpoint import checkpoint

    swapped = []
    for module in model.modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        if getattr(module, "gradient_checkpointing", False) and func is not None and _is_reentrant(func):
            swapped.append((module, func))
            module._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
    try:
        yield
    finally:
        for module, func in swapped:
            module._gradient_checkpointing_func = func


@contextlib.contextmanager
def sinks_only_pass(model: nn.Module, slices: Sequence[SinkSlice]) -> Iterator[None]:
    """The block computes a gradient for the sinks alone: checkpointing made non-reentrant, and every
    trainable parameter that holds no sink entry set not to require grad until the block ends.

    ``torch.autograd.grad`` with respect to the sinks skips the other parameters' gradients in the
    stock operations, but not in a custom autograd function (the appended pool's ``joint_linear``
    would compute its base weights' gradients and drop them); a parameter that does not require grad
    is skipped by every operation, and its forward keeps nothing for a weight gradient. With the
    split placement the sinks are slices of the MLPs' own projections, which keep requiring grad.
    """
    holding = {id(s.param) for s in slices}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in holding]
    for p in others:
        p.requires_grad_(False)
    try:
        with non_reentrant_checkpointing(model):
            yield
    finally:
        for p in others:
            p.requires_grad_(True)


def _is_reentrant(func: Callable) -> bool:
    keywords = getattr(func, "keywords", None) or {}
    return bool(keywords.get("use_reentrant", False))


def normalize_private_mask(private_mask: Any, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    """Check a batch's ``private_mask`` and return it as a bool tensor (B, T).

    It must hold 0/1 (or bools), one per token of ``input_ids``; floats, other values or
    another shape are errors, never cast.
    """
    if not isinstance(private_mask, torch.Tensor):
        try:
            private_mask = torch.as_tensor(private_mask)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"private_mask must be a (B, T) tensor of 0/1; got {type(private_mask).__name__}.") from err
    if private_mask.is_floating_point() or private_mask.is_complex():
        raise TypeError(f"private_mask must hold 0/1 integers or bools, one per token; got dtype {private_mask.dtype}.")
    if input_shape is not None and tuple(private_mask.shape) != tuple(input_shape[:2]):
        raise ValueError(f"private_mask has shape {tuple(private_mask.shape)} but the input batch is "
                         f"{tuple(input_shape[:2])}; give one 0/1 per token (memsinks.mark_private_spans makes it).")
    if private_mask.dtype != torch.bool:
        bad = (private_mask != 0) & (private_mask != 1)
        if bool(bad.any()):
            value = private_mask[bad][0].item()
            raise ValueError(f"private_mask must hold only 0 and 1 (1 = a private token); it holds {value}.")
        private_mask = private_mask.bool()
    return private_mask


def split_labels(labels: torch.Tensor, private_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(public labels, private labels): ``labels`` (B, T) with the other kind's positions set to -100.

    ``private_mask`` (B, T) marks tokens; the label at position t is the token at t, so
    masking the labels where the mask is 1 removes exactly the loss of predicting private tokens.
    """
    private = private_mask.to(device=labels.device, dtype=torch.bool)
    return labels.masked_fill(private, IGNORE_INDEX), labels.masked_fill(~private, IGNORE_INDEX)


def _count(labels: torch.Tensor) -> int:
    """Labelled predictions of a causal LM loss (labels are shifted: position 0 is never a target)."""
    return int((labels[..., 1:] != IGNORE_INDEX).sum())


def batch_marginal_loss(logits: torch.Tensor, private_labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the private positions' predictions against their pooled targets.

    Args:
        logits: (B, T, V) the public pass's logits.
        private_labels: (B, T) the private tokens, -100 elsewhere (causal: position t's logits
            predict the label at t + 1).

    Returns a scalar: ``-sum_i sum_v q_v log p_i(v)`` over the n private positions i, where
    ``q`` is the histogram of the n private tokens divided by n, the same target at every one.
    """
    targets = private_labels[:, 1:]
    where = targets != IGNORE_INDEX
    tokens = targets[where]
    if tokens.numel() == 0:
        return logits.sum() * 0.0
    kinds, counts = torch.unique(tokens, return_counts=True)
    q = counts.to(torch.float32) / tokens.numel()
    log_p = torch.log_softmax(logits[:, :-1][where].float(), dim=-1)[:, kinds]
    return -(log_p @ q).sum()


def forward_with_private_tokens(
    run_forward: Callable[..., Any],
    kwargs: dict,
    private_mask: torch.Tensor,
    slices: Sequence[SinkSlice],
    model: nn.Module,
    drop_sinks: Callable[[], None],
    own_sinks: Callable[[], None],
    marginal_target: bool = False,
    prefix: Sequence[nn.Module] = (),
):
    """The training forward with marked private tokens (see the module docstring).

    Args:
        run_forward: calls the stock forward with keyword arguments and returns its output.
        kwargs: the forward's keyword arguments; must hold ``labels`` (B, T).
        private_mask: (B, T) 0/1, aligned with ``labels``.
        slices: the sinks' tensors (or slices of tensors, split placement) the private tokens may train.
        model: the module whose gradient checkpointing is made non-reentrant for the private pass.
        drop_sinks: switches the sinks off for the forwards that follow (the public pass, and its
            recomputation under gradient checkpointing); the caller routes the next forward anew.
        own_sinks: switches every sequence's own sinks back on (after the public pass, when it runs first).
        marginal_target: train the public pass toward the batch's pooled private tokens at the
            private positions (``batch_marginal_loss``), weighted as one more labelled token each.
        prefix: the blocks below the lowest sink block, in order; when there are any, the public pass runs
            first and the private pass replays their outputs (``memsinks.shared_prefix``).
    """
    labels = kwargs.get("labels")
    if labels is None:
        raise ValueError(
            "The batch has a private_mask but the forward got no labels: the model routes the private tokens' loss "
            "to the sinks, so it must compute the loss itself. Do not pop the labels (Trainer label smoothing and "
            "compute_loss_func do) when training with private_mask.")
    if "shift_labels" in kwargs:
        raise ValueError("private_mask with shift_labels is not supported; give labels aligned with input_ids instead.")
    if tuple(private_mask.shape) != tuple(labels.shape):
        raise ValueError(f"private_mask has shape {tuple(private_mask.shape)} but labels {tuple(labels.shape)}; "
                         "give one 0/1 per token.")
    if kwargs.get("return_dict") is False:  # both passes need the output's fields; the caller gets its tuple back
        return forward_with_private_tokens(run_forward, {**kwargs, "return_dict": True}, private_mask, slices, model,
                                           drop_sinks, own_sinks, marginal_target, prefix).to_tuple()
    public, private = split_labels(labels, private_mask)
    n_private = _count(private)
    slices = [s for s in slices if s.param.requires_grad]
    params = [s.param for s in slices]
    if n_private == 0:  # nothing private here: the public pass alone, still without the sinks
        drop_sinks()
        return run_forward(**kwargs)
    if not params:
        raise ValueError(
            "The batch marks private tokens but none of the model's sink parameters is trainable, so their loss "
            "could only train the shared parameters, the ones you ship. Make the sinks trainable (with peft, call "
            "memsinks.add_sinks after get_peft_model), or drop the private_mask column to train on every token.")
    n_public = _count(public)
    given = kwargs.get("num_items_in_batch") is not None
    total = n_public + n_private

    def weighted(loss: torch.Tensor, n: int) -> torch.Tensor:
        return loss if given else loss * (n / total)

    def private_pass() -> tuple:
        with sinks_only_pass(model, slices):
            loss_private = weighted(run_forward(**{**kwargs, "labels": private}).loss, n_private)
            return torch.autograd.grad(loss_private, params, allow_unused=True), loss_private.detach()

    out, (grads, private_value) = shipped_and_sinks_passes(
        lambda: run_forward(**{**kwargs, "labels": public}), private_pass, drop_sinks, own_sinks, prefix)
    grads = [torch.zeros_like(s.param) if g is None else s.keep(g) for s, g in zip(slices, grads)]
    if n_public:
        loss_public = weighted(out.loss, n_public)
    else:
        loss_public = out.logits.sum() * 0.0
    if marginal_target:
        marginal = batch_marginal_loss(out.logits, private) / (kwargs["num_items_in_batch"] if given else total)
        loss_public = loss_public + (marginal - marginal.detach())
    out.loss = AddSinkGradients.apply(loss_public, private_value, len(grads), *grads, *params)
    return out
