"""Tokens the sinks have memorized train only the sinks: private spans found without labels.

A marked private token (``memsinks.private_tokens``) trains the sinks alone, so the shipped
model cannot memorize it. ``SinksConfig.memorized_threshold`` finds such tokens during training
instead of from a user's marks. The training forward runs the model twice on the batch:

1. sinks on, each sequence's own: the loss on every labelled token, differentiated at once
   (``torch.autograd.grad``) with respect to the sink parameters only. The sinks learn each
   sequence's tokens as fast as their learning rate lets them; with centered masks what all
   sequences share cancels across the pool, so what they keep is what is specific to a
   sequence. Its per-token losses ``l_on`` (B, T - 1) are kept.
2. sinks dropped, as the model will be shipped: the per-token losses ``l_drop`` (B, T - 1).
   A token with ``l_on < threshold < l_drop`` is one its sequence's own sinks predict (with
   probability above ``exp(-threshold)``) and the shipped model does not: content of that
   sequence the sinks have memorized. Its loss trains nothing here (the sinks had it in pass
   1); every other token's loss trains the shared parameters, as in plain fine-tuning.

A sequence's first sight therefore trains the shipped model as plain fine-tuning would (its
sinks know nothing of it yet), and from the time its sinks have memorized a span that the
shipped model has not learned, that span no longer reaches a shared parameter. The sinks
must predict the token, not merely do better than the shipped model: on a pretrained model the
fast sinks lower every token's loss of a sequence they have seen, the task's too, and a rule
on the difference alone (``l_drop - l_on > 1`` nat) routed a third of all tokens and cost the
task 47% on the fine-tuning benchmark (seed 0; ``docs/finetuning.md``).

With ``SinksConfig.memorized_specific`` a third forward, without gradient, scores each token with
the sinks of a sequence never trained on (``unseen_sinks``: each ID's stand-in is ``-1 - id``,
which no sequence has): a token that those sinks predict too (loss below the threshold) is
something the pool learned from many sequences, such as a domain's common language, and keeps
training the shipped model; only tokens that the sequence's own sinks alone predict are routed.

With ``SinksConfig.memorized_missed_only`` pass 2 runs first, and pass 1 (and the third forward)
computes the output layer and the loss only at the tokens that pass 2 scores above the threshold
(and the marked ones): the only tokens that can be routed. The sinks then learn only what the
shipped model misses, and the output layer, a large part of a pass when the vocabulary is large,
costs those rows alone.

When the sinks sit only in the upper blocks (``SinksConfig.layers``), pass 2 runs first and
the blocks below the lowest sink block compute once: the sinks' passes replay their outputs
(``memsinks.shared_prefix``) and cost only the blocks above and the head.

During the sinks' warm-up (``SinksConfig.sink_warmup_steps``) no parameter outside the sinks
learns, so pass 2 runs without gradient: its losses are still needed (which tokens are missed,
the loss returned), its backward is not. Those parameters get a zero gradient instead, as the
warm-up's hooks would have left them.

The returned loss is each labelled token's loss as it was trained (``l_on`` for the routed
ones, ``l_drop`` for the rest), summed and divided by ``num_items_in_batch`` when the Trainer
passes it, else by the batch's labelled tokens. Marked ``private_mask`` tokens are routed too.
The cost is that of marked spans: two forwards and a backward that stops at the sinks' weights.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from memsinks.private_tokens import IGNORE_INDEX, AddSinkGradients, sinks_only_pass
from memsinks.shared_prefix import shipped_and_sinks_passes
from memsinks.sink_slices import SinkSlice


@dataclass
class RoutedCount:
    """Labelled tokens seen by training forwards, and how many of them were routed to the sinks alone."""

    routed: int = 0
    labelled: int = 0

    @property
    def fraction(self) -> float:
        return self.routed / self.labelled if self.labelled else 0.0


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses, labelled): a causal LM's cross-entropy per predicted token, in float32, and where it counts.

    Args:
        logits: (B, T, V); position t predicts the label at t + 1.
        labels: (B, T), -100 where no loss is taken.

    Returns ``losses`` (B, T - 1), zero where the label is -100, and the bool ``labelled`` (B, T - 1).
    The labels are shifted, not the logits: a slice of the (B, T, V) logits would be copied, and
    its gradient filled into a zero tensor of their size, on each of a training step's passes.
    """
    targets = F.pad(labels[:, 1:].to(logits.device), (0, 1), value=IGNORE_INDEX)
    losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                             reduction="none").view(targets.shape)[:, :-1]
    return losses, targets[:, :-1] != IGNORE_INDEX


def forward_with_memorized_tokens(
    run_forward: Callable[..., Any],
    kwargs: dict,
    slices: Sequence[SinkSlice],
    model: nn.Module,
    drop_sinks: Callable[[], None],
    own_sinks: Callable[[], None],
    threshold: float,
    count: RoutedCount,
    private_mask: torch.Tensor | None = None,
    unseen_sinks: Callable[[], None] | None = None,
    prefix: Sequence[nn.Module] = (),
    missed_only_head: nn.Module | None = None,
    shared_frozen: bool = False,
):
    """The training forward that routes memorized tokens to the sinks (see the module docstring).

    Args:
        run_forward: calls the stock forward with keyword arguments and returns its output.
        kwargs: the forward's keyword arguments; must hold ``labels`` (B, T).
        slices: the sinks' tensors (or slices of tensors, split placement), the only ones pass 1 trains.
        model: the module whose gradient checkpointing is made non-reentrant for pass 1.
        drop_sinks: switches the sinks off for the forwards that follow (pass 2 and its recomputation
            under gradient checkpointing).
        own_sinks: switches every sequence's own sinks back on (after pass 2, when it runs first).
        threshold: nats; a token whose loss with its own sinks on is below it and with the sinks dropped above
            it trains the sinks alone.
        count: adds this batch's labelled and routed tokens.
        private_mask: (B, T) bool, tokens routed to the sinks whatever their losses; None for none.
        unseen_sinks: switches every sequence's sinks to those of a sequence never trained on, for a forward
            without gradient whose losses must also be above ``threshold`` for a token to be routed; None: no
            such forward (``SinksConfig.memorized_specific`` off).
        prefix: the blocks below the lowest sink block, in order; when there are any, pass 2 runs first and
            records their outputs, and the sinks' passes replay them (``memsinks.shared_prefix``), computing
            only the blocks above. Empty: every pass runs the whole model.
        missed_only_head: the model's output layer, for ``SinksConfig.memorized_missed_only``: pass 2 runs
            first and the sinks' passes compute this layer and their loss only at the tokens that could be
            routed (``missed_tokens``). None: the sinks' passes score every labelled token.
        shared_frozen: no parameter outside the sinks learns from this batch (the sinks' warm-up, which
            zeroes their gradients): pass 2 then runs without gradient, which saves its backward, and
            each of those parameters gets a zero gradient, as the warm-up would have left it (Adam's step
            count and the clipping norm see what they would have seen).
    """
    labels = kwargs.get("labels")
    if labels is None:
        raise ValueError(
            "SinksConfig.memorized_threshold routes memorized tokens' loss to the sinks, so the model must compute the "
            "loss itself, and the forward got no labels. Do not pop the labels (Trainer label smoothing and "
            "compute_loss_func do), or set memorized_threshold=0.")
    if "shift_labels" in kwargs:
        raise ValueError("memorized_threshold with shift_labels is not supported; give labels aligned with input_ids.")
    if kwargs.get("return_dict") is False:  # both passes need the output's fields; the caller gets its tuple back
        return forward_with_memorized_tokens(run_forward, {**kwargs, "return_dict": True}, slices, model, drop_sinks,
                                             own_sinks, threshold, count, private_mask, unseen_sinks,
                                             prefix, missed_only_head, shared_frozen).to_tuple()
    slices = [s for s in slices if s.param.requires_grad]
    if not slices:
        raise ValueError(
            "SinksConfig.memorized_threshold is set but none of the model's sink parameters is trainable, so nothing "
            "could take the memorized tokens. Make the sinks trainable (with peft, call memsinks.add_sinks after "
            "get_peft_model), or set memorized_threshold=0.")
    params = [s.param for s in slices]
    sinks = {id(p) for p in params}
    zeroed = [p for p in model.parameters() if p.requires_grad and id(p) not in sinks] if shared_frozen else []
    if any(p.numel() == 0 for p in zeroed):  # partitioned away (DeepSpeed ZeRO-3): only a backward fills their shape
        shared_frozen, zeroed = False, []
    given = kwargs.get("num_items_in_batch")
    bare = {**kwargs, "labels": None}
    marked = None if private_mask is None else private_mask[:, 1:].to(labels.device)
    shipped_losses: list = []

    def shipped_pass():
        with torch.no_grad() if shared_frozen else contextlib.nullcontext():
            out = run_forward(**bare)
        shipped_losses.extend(token_losses(out.logits, labels))
        return out

    def scored(where: torch.Tensor | None) -> torch.Tensor:
        """(B, T - 1) losses of a forward with the sinks as routed now; with ``where``, at those tokens only (0
        elsewhere), the output layer computing only their rows."""
        if where is None:
            return token_losses(run_forward(**bare).logits, labels)[0]
        with rows_only(missed_only_head, where):
            logits = run_forward(**bare).logits
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:][where], reduction="none")
        return torch.zeros(where.shape, dtype=losses.dtype, device=losses.device).masked_scatter(where, losses)

    def sinks_passes() -> tuple:
        """Pass 1 and, with ``unseen_sinks``, the forward in unseen sequences' sinks; the router is left on them."""
        if missed_only_head is None:
            where, labelled = None, labels[:, 1:] != IGNORE_INDEX
        else:
            losses_drop, labelled = shipped_losses
            where = missed_tokens(losses_drop.detach(), labelled, threshold, marked)
        n_labelled = int(labelled.sum())
        total = given if given is not None else max(n_labelled, 1)
        if where is not None and not bool(where.any()):  # nothing could be routed: the sinks learn nothing here
            zeros = torch.zeros(labelled.shape, device=labelled.device)
            return [None] * len(params), zeros, labelled, n_labelled, total, None
        with sinks_only_pass(model, slices):
            losses_on = scored(where)
            grads = torch.autograd.grad(losses_on.sum() / total, params, allow_unused=True)
        losses_unseen = None
        if unseen_sinks is not None:
            unseen_sinks()
            with torch.no_grad():
                losses_unseen = scored(where)
        return grads, losses_on.detach(), labelled, n_labelled, total, losses_unseen

    out, (grads, losses_on, labelled, n_labelled, total, losses_unseen) = shipped_and_sinks_passes(
        shipped_pass, sinks_passes, drop_sinks, own_sinks, prefix, shipped_first=missed_only_head is not None)
    grads = [torch.zeros_like(s.param) if g is None else s.keep(g) for s, g in zip(slices, grads)]
    losses_drop = shipped_losses[0]
    routed = labelled & (losses_on < threshold) & (losses_drop.detach() > threshold)
    if losses_unseen is not None:
        routed &= losses_unseen > threshold
    if marked is not None:
        routed |= labelled & marked
    loss_public = (losses_drop * ~routed).sum() / total
    routed_value = (losses_on * routed).sum() / total
    count.routed += int(routed.sum())
    count.labelled += n_labelled
    out.loss = AddSinkGradients.apply(loss_public, routed_value, len(grads), *grads, *params, *zeroed)
    return out


def missed_tokens(losses_drop: torch.Tensor, labelled: torch.Tensor, threshold: float,
                  marked: torch.Tensor | None) -> torch.Tensor:
    """(B, T - 1) bool: the labelled tokens that could be routed, those the shipped model misses (loss above
    ``threshold`` with the sinks dropped) and the marked ones (``marked`` (B, T - 1) or None)."""
    where = labelled & (losses_drop > threshold)
    return where if marked is None else where | (labelled & marked)


@contextlib.contextmanager
def rows_only(head: nn.Module, where: torch.Tensor) -> Iterator[None]:
    """Inside the block, ``head`` (the output layer) is computed only at the positions ``where`` marks.

    ``where`` (B, T - 1) marks predictions of a causal LM, position t predicting the token at t + 1.
    ``head``'s input (B, T, H) becomes (1, N, H), the N marked rows in order, so the model's
    logits are (1, N, V): the output layer's product and the loss cost N rows instead of B x T.
    """
    def keep_rows(_module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        if hidden.shape[:2] != (where.shape[0], where.shape[1] + 1):
            raise ValueError(f"memorized_missed_only: the output layer got hidden states of shape "
                             f"{tuple(hidden.shape)} for labels of shape {(where.shape[0], where.shape[1] + 1)}; "
                             "the model must compute logits at every position (do not pass logits_to_keep).")
        return (hidden[:, :-1][where].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(keep_rows)
    try:
        yield
    finally:
        handle.remove()
