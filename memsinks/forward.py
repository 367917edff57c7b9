"""The instance ``forward`` of a model with sinks: it takes ``sequence_ids`` and routes by them.

``add_sinks`` replaces the instance's ``forward`` (the class keeps its own) with
``ForwardWithSequenceIds``, whose signature is the class forward's plus ``sequence_ids`` and
``private_mask``; the stock Trainer's ``remove_unused_columns`` and ``generate()``'s kwargs
check read that signature, so both columns survive the column filter and the IDs reach every
generation step.

In training (training mode, gradients on) the forward also counts the sinks' warm-up
(``memsinks.warmup``) and, when the batch marks private tokens, trains on them through the
sinks only (``memsinks.private_tokens``); with ``SinksConfig.memorized_threshold`` it finds
such tokens itself (``memsinks.memorized_tokens``; what it routed is counted in ``routed``).
Outside training ``private_mask`` is checked and otherwise ignored: evaluation scores every token.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import nn

from memsinks.architectures import find_blocks, layout_for
from memsinks.ids import normalize_sequence_ids
from memsinks.layers import SinkDownProjection, sink_parameters
from memsinks.memorized_tokens import RoutedCount, forward_with_memorized_tokens
from memsinks.private_tokens import forward_with_private_tokens, normalize_private_mask
from memsinks.projection import linear_weight
from memsinks.routing import SinkRouter
from memsinks.sink_slices import sink_slices
from memsinks.sink_learning_rate import SinkLearningRateCheck
from memsinks.warmup import SinkWarmup

logger = logging.getLogger("memsinks")


class ForwardWithSequenceIds:
    """Routes a batch by its ``sequence_ids`` (via ``router.begin``), then runs the stock forward.

    ``reference`` is a sink layer whose weight gives the masks' dtype and device.
    """

    def __init__(self, model: nn.Module, router: SinkRouter, reference: SinkDownProjection,
                 warmup: SinkWarmup | None = None):
        self.model = model
        self.router = router
        self.reference = reference
        self.warmup = warmup
        self.checked_trainable = False
        self.routed = RoutedCount()
        self.lr_check = SinkLearningRateCheck(model, router.config.sink_lr_scale)
        self.class_forward = type(model).forward
        sig = inspect.signature(self.class_forward)
        params = [p for name, p in sig.parameters.items() if name != "self"]
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
                 for name in ("sequence_ids", "private_mask")]
        at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
        params[at:at] = extra
        self.__signature__ = sig.replace(parameters=params)

    def __call__(self, *args: Any, sequence_ids: Any = None, private_mask: Any = None, **kwargs: Any):
        model = self.model
        router = self.router
        mode, exclude = router.resolve_mode(model.training)
        ids = None
        if sequence_ids is not None:
            ids = normalize_sequence_ids(sequence_ids, _input_shape(args, kwargs))
        if mode == "own" and ids is None:
            if model.training:
                raise ValueError(
                    "This model has memorization sinks and is training, but the batch has no `sequence_ids`: "
                    "training without routing would silently train every sink on every sequence. Give each "
                    "example an ID (memsinks.assign_sequence_ids) and batch with memsinks.SinksDataCollator, or "
                    "pass model(..., sequence_ids=ids). To train with sinks off on purpose, use "
                    "`with memsinks.sinks_mode(model, 'drop'):`."
                )
            raise ValueError(
                "Sinks mode 'own' needs `sequence_ids` (LongTensor of shape (B,) or (B, T)); pass them to the "
                "forward or to generate(), or use mode 'drop' / 'mean'."
            )
        if private_mask is not None:
            private_mask = normalize_private_mask(private_mask, _input_shape(args, kwargs))
        # a forward in which no parameter requires grad is not training the model through autograd (DP-SGD's
        # clipper switches requires_grad off while it records): the check waits for one that is
        if model.training and not self.checked_trainable and any(p.requires_grad for p in model.parameters()):
            self.checked_trainable = True
            _warn_if_sinks_frozen(model)
        training = model.training and torch.is_grad_enabled()
        if training:
            self.lr_check.arm()
        threshold = router.config.memorized_threshold if router.config.routes_memorized else None
        if training and self.warmup is not None:
            if private_mask is None or threshold is not None:
                self.warmup.on_training_forward()
            else:  # marked tokens reach only the sinks anyway: no race to win, and no step of the task to lose
                self.warmup.active = False
        weight = linear_weight(self.reference.base)
        router.begin(ids, mode, exclude, weight.dtype, weight.device)

        def run(**kw: Any) -> Any:
            return self.class_forward(model, *args, **kw)

        def drop() -> None:
            router.begin(ids, "drop", (), weight.dtype, weight.device)

        def own() -> None:
            router.begin(ids, "own", (), weight.dtype, weight.device)

        if training and threshold is not None and mode == "own":  # sinks_mode(model, "drop") trains without them
            unseen = None
            if router.config.memorized_specific:
                stand_ins = torch.where(ids == 0, ids, -1 - ids)  # no sequence ID is negative; 0 (no sinks) stays 0

                def unseen() -> None:
                    router.begin(stand_ins, "own", (), weight.dtype, weight.device)
            head = _output_layer(model) if router.config.memorized_missed_only else None
            return forward_with_memorized_tokens(run, kwargs, sink_slices(model), model, drop, own, threshold,
                                                 self.routed, private_mask, unseen, _blocks_below_sinks(model, router),
                                                 missed_only_head=head,
                                                 shared_frozen=self.warmup is not None and self.warmup.active)
        if training and private_mask is not None:
            marginal = router.config.private_token_target == "batch_marginal"
            return forward_with_private_tokens(run, kwargs, private_mask, sink_slices(model), model, drop, own,
                                               marginal_target=marginal, prefix=_blocks_below_sinks(model, router))
        return self.class_forward(model, *args, **kwargs)


def _blocks_below_sinks(model: nn.Module, router: SinkRouter) -> list[nn.Module]:
    """The model's blocks below its lowest sink block, in order (``memsinks.shared_prefix``); none when block 0 has
    sinks."""
    lowest = min(spec.layer for spec in router.specs)
    if lowest == 0:
        return []
    return list(find_blocks(model, layout_for(router.config.model_type)))[:lowest]


def _output_layer(model: nn.Module) -> nn.Module:
    """The model's output embeddings, which ``SinksConfig.memorized_missed_only`` computes at some positions only."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Module):
        raise ValueError(f"SinksConfig.memorized_missed_only computes the output layer at the routable tokens only, "
                         f"and {type(model).__name__} has no output embeddings (get_output_embeddings() gave "
                         f"{head!r}); set memorized_missed_only=False.")
    return head


def _input_shape(args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    x = kwargs.get("input_ids", args[0] if args else None)
    if x is None:
        x = kwargs.get("inputs_embeds")
        return tuple(x.shape[:2]) if x is not None else None
    return tuple(x.shape)


def _warn_if_sinks_frozen(model: nn.Module) -> None:
    params = sink_parameters(model)
    if params and not any(p.requires_grad for p in params.values()):
        logger.warning(
            "Training a model whose sink units are all frozen: the sinks cannot absorb memorization. With peft, "
            "call memsinks.add_sinks on the peft model (after get_peft_model), so the appended sink units stay "
            "trainable next to the LoRA adapters."
        )
