"""The optimizer wrapper: Opacus's noise-and-step on the clipped sums ``PerUnitClipper`` accumulates.

Opacus's ``DPOptimizerFastGradientClipping`` adds ``N(0, (sigma C)^2)`` to ``p.summed_grad``,
divides by the expected batch size and steps the wrapped optimizer; its step hook (the
ledger) runs after the noise and before the update. Two things differ here:

- the clipped sums are written into ``p.summed_grad`` directly by the clipper, never into
  ``p.grad``, so nothing between backward and step (the Trainer's grad-norm logging, for
  one) sees an un-noised gradient;
- the step clears ``summed_grad`` itself. The Trainer calls ``model.zero_grad()``, not the
  optimizer's ``zero_grad``, after a step, and Opacus would otherwise refuse the next step
  (or, worse, a wrapper that skipped its check would add the old sum again).
"""

from __future__ import annotations

from typing import Callable

import torch
from opacus.optimizers.optimizer_fast_gradient_clipping import DPOptimizerFastGradientClipping


class PrivateOptimizer(DPOptimizerFastGradientClipping):
    """Noise, scale by the expected batch size (units), step; one call per logical batch."""

    def accumulate(self) -> None:
        for p in self.params:
            if getattr(p, "summed_grad", None) is None:  # a parameter no unit reached this step
                p.summed_grad = torch.zeros_like(p)

    def step(self, closure: Callable | None = None):
        try:
            return super().step(closure)
        finally:
            self.clear()

    def clear(self) -> None:
        """Forget the accumulated clipped sums (after a step, or when a step is abandoned)."""
        for p in self.params:
            p.summed_grad = None
        self._is_last_step_skipped = False
