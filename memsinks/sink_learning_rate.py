"""A check, at the first optimizer step, that the sinks' effective learning rate is not too high.

``SinksConfig.sink_lr_scale`` stores the sinks divided by the scale and multiplies them back in
the forward, so an Adam-type optimizer moves them ``scale`` times further per step than its
learning rate says. The scale that suits one learning rate can wreck training at another: the
append default of 32 was chosen at 3e-4, and benchmarks/results/full_run's scenario 2 fine-tunes
at 3e-3, where the sinks (at 9.6e-2) took over the task and the model with the sinks dropped
lost it (held-out loss 3.87 against standard fine-tuning's 0.80).

The model never sees the optimizer, so at its first training forward it puts its check on a
list that one global optimizer step pre-hook of this module
(``torch.optim.optimizer.register_optimizer_step_pre_hook``, registered once) goes through. At
the first step of an Adam-type optimizer that holds the model's sink parameters, the check
compares each such parameter group's learning rate (its ``initial_lr`` where a scheduler set
one, so a warm-up schedule that starts at 0 is judged by its peak) times the scale with
``MAX_EFFECTIVE_SINK_LR``, warns once, naming the numbers and a scale that fits, and leaves the
list. The list holds the checks weakly and each check holds its model weakly, so a model that is
deleted leaves it too. The hook itself stays (removing a hook while torch iterates over them is an
error) and does nothing when the list is empty. Other optimizers are not judged: under plain SGD
the scale acts squared, and the limit was measured under AdamW only.
"""

from __future__ import annotations

import logging
import math
import weakref

from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from memsinks.sink_slices import sink_slices

logger = logging.getLogger("memsinks")

#: A limit on the effective learning rate (the optimizer's times ``sink_lr_scale``) placed between measured rates.
#: Below it: 9.6e-3 (SmolLM2-135M, 3e-4 x 32, the append defaults; their cost is in docs/finetuning.md) and 1.2e-2
#: (the memorization benchmark's scenario 2, 3e-3 x 4: held-out loss 2.6% below standard fine-tuning's,
#: benchmarks/results/sweep_scenario2). Above it, each costlier than the rate below: 1.9e-2 (SmolLM2, x64: task
#: loss 2.51 against 1.91 at x32 on seed 0), 2.4e-2 (scenario 2, x8: held-out loss +6.7% over standard's) and
#: 9.6e-2 (scenario 2, x32: the task lost).
MAX_EFFECTIVE_SINK_LR = 1.5e-2


def _inner_optimizer(optimizer):
    """The optimizer that really updates the weights, under wrappers that keep it as an attribute
    (accelerate's ``AcceleratedOptimizer.optimizer``, Opacus' ``DPOptimizer.original_optimizer``)."""
    for _ in range(8):  # wrappers nest a level or two; the bound keeps a wrapper that points back from looping
        inner = getattr(optimizer, "original_optimizer", None) or getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer or not hasattr(inner, "param_groups"):
            break
        optimizer = inner
    return optimizer


def suggested_scale(learning_rate: float, limit: float = MAX_EFFECTIVE_SINK_LR) -> float:
    """The largest power of two ``s`` with ``learning_rate * s <= limit``."""
    return 2.0 ** math.floor(math.log2(limit / learning_rate))


_pending: "weakref.WeakSet[SinkLearningRateCheck]" = weakref.WeakSet()
_hook = None


def _before_any_step(optimizer, args, kwargs) -> None:
    for check in list(_pending):
        check.judge(optimizer)


class SinkLearningRateCheck:
    """Warns once if an Adam-type optimizer's learning rate times ``scale`` exceeds ``MAX_EFFECTIVE_SINK_LR``."""

    def __init__(self, model: nn.Module, scale: float):
        self._model = weakref.ref(model)
        self.scale = scale
        self.done = scale == 1.0

    def arm(self) -> None:
        """Called at each training forward: wait for the next optimizer step, until one has been judged."""
        global _hook
        if self.done or self in _pending:
            return
        if _hook is None:
            _hook = register_optimizer_step_pre_hook(_before_any_step)
        _pending.add(self)

    def judge(self, optimizer) -> None:
        """Before ``optimizer``'s step: if it updates this model's sinks, warn when their rate is too high."""
        model = self._model()
        if model is None:
            _pending.discard(self)
            return
        sinks = {id(s.param) for s in sink_slices(model)}
        groups = [g for g in optimizer.param_groups if any(id(p) in sinks for p in g["params"])]
        if not groups:
            return  # another model's optimizer
        self.done = True
        _pending.discard(self)
        if "adam" not in type(_inner_optimizer(optimizer)).__name__.lower():
            return
        rate = max(max(float(g["lr"]), float(g.get("initial_lr", 0.0))) for g in groups)
        effective = rate * self.scale
        if effective > MAX_EFFECTIVE_SINK_LR:
            logger.warning(
                f"The sinks train at learning rate {rate:g} x SinksConfig.sink_lr_scale {self.scale:g} = "
                f"{effective:.3g}, above {MAX_EFFECTIVE_SINK_LR:g}: at such rates the sinks have taken the task "
                f"from the shared units, and the model with the sinks dropped (the one you ship) lost it. Set "
                f"SinksConfig(sink_lr_scale={suggested_scale(rate):g}) (the largest power of two that keeps it at or "
                f"below {MAX_EFFECTIVE_SINK_LR:g}) or lower the learning rate.")
