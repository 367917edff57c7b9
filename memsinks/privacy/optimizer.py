"""The optimizer wrapper: Opacus's noise-and-step on the clipped sums ``PerUnitClipper`` accumulates.

Opacus's ``DPOptimizerFastGradientClipping`` adds ``N(0, (sigma C)^2)`` to ``p.summed_grad``,
divides by the expected batch size and steps the wrapped optimizer; its step hook (the
ledger) runs after the noise and before the update. What differs here:

- the clipped sums are written into ``p.summed_grad`` directly by the clipper, never into
  ``p.grad``, so nothing between backward and step (the Trainer's grad-norm logging, for
  one) sees an un-noised gradient;
- the step clears ``summed_grad`` itself. The Trainer calls ``model.zero_grad()``, not the
  optimizer's ``zero_grad``, after a step, and Opacus would otherwise refuse the next step
  (or, worse, a wrapper that skipped its check would add the old sum again);
- the noise of each step comes from its own generator (``memsinks.privacy.randomness``),
  hardened against floating-point attacks unless the run is reproducible;
- under several processes (DDP) each rank holds the clipped sum of its share of the units;
  rank 0 alone adds the noise, then the sums are added up across ranks (all-reduce), so the
  step's noise is drawn exactly once, as in Opacus's ``DistributedDPOptimizer``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from opacus.optimizers.optimizer_fast_gradient_clipping import DPOptimizerFastGradientClipping

from memsinks.privacy.randomness import PrivacyRandomness


class PrivateOptimizer(DPOptimizerFastGradientClipping):
    """Noise, sum across ranks, scale by the expected batch size (units), step; one call per logical batch.

    Args (besides Opacus's):
        randomness: where the noise comes from.
        step_index: callable giving the number of the step about to be taken (the ledger's
            count), which seeds that step's noise.
    """

    def __init__(self, optimizer, *, randomness: PrivacyRandomness, step_index: Callable[[], int], **kwargs):
        super().__init__(optimizer, secure_mode=not randomness.reproducible, **kwargs)
        self.randomness = randomness
        self.step_index = step_index
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.distributed else 0

    def accumulate(self) -> None:
        for p in self.params:
            if getattr(p, "summed_grad", None) is None:  # a parameter no unit reached this step (on this rank)
                p.summed_grad = torch.zeros_like(p)

    def add_noise(self) -> None:
        """``p.grad = sum over ranks of p.summed_grad, + N(0, (sigma C)^2)`` drawn once (on rank 0)."""
        std = self.noise_multiplier * self.max_grad_norm
        generators: dict[torch.device, torch.Generator] = {}
        for p in self.params:
            grad = p.summed_grad  # taken over in place: the step clears summed_grad afterwards
            if self.rank == 0 and std > 0:
                device = grad.device
                if device not in generators:
                    generators[device] = self.randomness.torch_generator(device, "noise", self.step_index())
                grad.add_(self._noise(std, grad, generators[device]))
            if self.distributed:
                dist.all_reduce(grad, op=dist.ReduceOp.SUM)
            p.grad = grad.view_as(p)

    def _noise(self, std: float, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """N(0, std^2) shaped like ``like``; hardened: (sum of four N(0, std^2) draws) / 2, as Opacus's secure mode."""
        noise = torch.empty_like(like).normal_(0.0, std, generator=generator)
        if self.secure_mode:
            draw = torch.empty_like(like)
            for _ in range(3):
                noise.add_(draw.normal_(0.0, std, generator=generator))
            noise.div_(2)
        return noise

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
