"""``PerUnitClipper``: per-unit gradient norms and the sum of clipped per-unit gradients, in one backward pass.

Opacus's hooks mode materialises every per-example gradient *and* lets autograd compute
the ordinary batch gradient it then throws away; its ghost mode runs a second backward
pass. This is the book-keeping variant (Bu et al. 2023, "Differentially private
optimization on large model at small cost", ICML): during the one backward pass the
trainable parameters do not require grad, so autograd computes no weight gradients at all;
forward hooks keep each layer's input (``HookRecord``) and a tensor hook its output
gradient. Per parameter the clipper then either

- ``"hooks"``: materialises the per-row gradients from those two factors in the hook (the
  same multiply-adds the ordinary weight gradient costs), so norms and the clipped sum are
  cheap reductions;
- ``"ghost"``: keeps the factors and takes norms from Gram matrices (``gram``);
- ``"auto"``: materialises, except where that would take more than ``AUTO_MEMORY_RATIO``
  times the memory of the factors (input embeddings, above all).

A parameter shared by several modules (GPT-2's tied input/output embedding) collects the
contributions of all of them, so its per-unit norm is the norm of their sum.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from memsinks.privacy.grad_sample.factors import Dense, Outer
from memsinks.privacy.grad_sample.gram import clipped_outer_sum, ghost_squared_norms
from memsinks.privacy.grad_sample.registry import Handler, fallback_handler, handler_for
from memsinks.privacy.grad_sample.units import UnitGrouping

CLIP_EPS = 1e-6  # added to the norm before dividing, as Opacus does
CLIPPING_MODES = ("auto", "hooks", "ghost")

#: ``clipping="auto"`` materialises a parameter's per-unit gradients (the fastest way on the
#: models measured in benchmarks/dp_overhead.py) unless they would take more than this many
#: times the memory of the factors ghost clipping keeps instead (embeddings: vocabulary x
#: width per unit against tokens x width, so they go ghost)
AUTO_MEMORY_RATIO = 2.0


@dataclass
class Owner:
    """A module whose handler accounts for ``owned`` (names relative to the module)."""

    name: str
    module: nn.Module
    handler: Handler
    owned: dict[str, nn.Parameter]


@dataclass
class HookRecord:
    """What the forward hook of one module call keeps until its output gradient arrives.

    ``saved`` is dropped (set to None) as soon as the contributions are computed.
    """

    owner: Owner
    saved: tuple | None
    out_shape: tuple[int, ...]


class _ParamState:
    """One trainable parameter's per-row gradients ("hooks") or factors ("ghost") for the current batch."""

    __slots__ = ("name", "param", "ghost_capable", "mode", "per_row", "outers")

    def __init__(self, name: str, param: nn.Parameter, ghost_capable: bool):
        self.name = name
        self.param = param
        self.ghost_capable = ghost_capable
        self.mode = "hooks"
        self.per_row: torch.Tensor | None = None  # (B, *param.shape) this batch, or None
        self.outers: list[Outer] = []

    def add(self, contribution: Dense | Outer) -> None:
        dtype = self.param.dtype
        if isinstance(contribution, Dense):
            per_row = contribution.per_row.to(dtype).reshape(-1, *self.param.shape)
            self.per_row = per_row if self.per_row is None else self.per_row.add_(per_row)
        elif self.mode == "ghost":
            self.outers.append(contribution.to(dtype))
        else:
            self._materialise(contribution.to(dtype))

    def _materialise(self, outer: Outer) -> None:
        b, p, q = outer.shape()
        if self.per_row is None:
            per_row = torch.empty((b, p, q), dtype=outer.right.dtype, device=outer.right.device)
            outer.write_per_row(per_row, accumulate=False)
            self.per_row = per_row.view(b, *self.param.shape)
        else:
            outer.write_per_row(self.per_row.view(b, p, q), accumulate=True)

    def squared_norms(self, units: UnitGrouping) -> torch.Tensor:
        """(U,) float32: the squared norm of each unit's gradient of this parameter."""
        total = torch.zeros(units.count, device=units.index.device, dtype=torch.float32)
        if self.per_row is not None:
            per = self.per_row if units.one_row_each else units.to_units(self.per_row)
            sq = torch.linalg.vector_norm(per.reshape(per.shape[0], -1), dim=1, dtype=torch.float32).pow(2)
            total = total + (units.to_units(sq) if units.one_row_each else sq)
        if self.outers:
            total = total + ghost_squared_norms(self.outers, units)
        return total

    def clipped_sum(self, units: UnitGrouping, factors: torch.Tensor, row_factors: torch.Tensor) -> torch.Tensor | None:
        """``sum_u c_u G_u`` for this parameter, or None if no unit reached it."""
        grad = None
        if self.per_row is not None:
            if units.one_row_each:
                grad = torch.tensordot(row_factors.to(self.per_row.dtype), self.per_row, dims=1)
            else:
                grad = torch.tensordot(factors.to(self.per_row.dtype), units.to_units(self.per_row), dims=1)
        for outer in self.outers:
            g = clipped_outer_sum(outer, row_factors)
            grad = g if grad is None else grad + g.view_as(grad)
        return grad

    def reset(self) -> None:
        self.per_row, self.outers = None, []


class PerUnitClipper:
    """Clips each privacy unit's gradient to ``max_grad_norm`` and sums the clipped gradients.

    Usage, per physical batch::

        with clipper.capture(units_index, num_units):
            loss_sum_over_units.backward()
        norms = clipper.clip_and_accumulate()   # adds sum_u c_u G_u to p.summed_grad

    ``p.summed_grad`` is the accumulator Opacus's ``DPOptimizerFastGradientClipping`` adds
    noise to. Outside ``capture`` the hooks do nothing, so evaluation and ``generate()``
    run the model as it is.
    """

    def __init__(self, model: nn.Module, max_grad_norm: float, clipping: str = "auto"):
        if clipping not in CLIPPING_MODES:
            raise ValueError(f"clipping must be 'auto', 'hooks' or 'ghost'; got {clipping!r}.")
        self.model = model
        self.max_grad_norm = float(max_grad_norm)
        self.clipping = clipping
        self._capturing = False
        self._paused = 0
        self._records: list[HookRecord] = []
        self._units: UnitGrouping | None = None
        self._modes_decided = False
        self._handles: list = []
        self.states: dict[int, _ParamState] = {}
        self.owners: list[Owner] = []
        self.last_norms: torch.Tensor | None = None
        self.last_clip_factors: torch.Tensor | None = None
        self._plan()

    # ------------------------------------------------------------------ set-up
    def _plan(self) -> None:
        """One handler per module with trainable parameters; hooks on each."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        candidates: list[tuple[str, nn.Module, Handler]] = []
        covered: set[int] = set()
        for name, module in self.model.named_modules():
            handler = handler_for(module)
            if handler is None and any(p.requires_grad for p in module.parameters(recurse=False)):
                handler = fallback_handler()
            if handler is not None:
                candidates.append((name, module, handler))
                covered.update(id(m) for m in handler.covers(module))
        ghost_capable: dict[int, bool] = {}
        for name, module, handler in candidates:
            if id(module) in covered:
                continue
            owned = handler.owned(module)
            if not owned:
                continue
            try:
                handler.validate(module)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
            owner = Owner(name, module, handler, owned)
            self.owners.append(owner)
            for pname, p in owned.items():
                outer = pname in handler.outer_params
                ghost_capable[id(p)] = ghost_capable.get(id(p), True) and outer
                if id(p) not in self.states:
                    self.states[id(p)] = _ParamState(names.get(id(p), f"{name}.{pname}"), p, outer)
            self._handles.append(module.register_forward_hook(partial(self._on_forward, owner)))
        for state in self.states.values():
            state.ghost_capable = ghost_capable[id(state.param)]

    def close(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def params(self) -> list[nn.Parameter]:
        return [s.param for s in self.states.values()]

    def name_of(self, param: nn.Parameter) -> str:
        """The model's name for a clipped parameter."""
        return self.states[id(param)].name

    @contextlib.contextmanager
    def paused(self):
        """Module calls inside record nothing (a handler's own evaluation of a module, for one)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    @contextlib.contextmanager
    def capture(self, units_index: torch.Tensor, num_units: int):
        """Record per-row gradient factors during the forward and backward run inside.

        Args:
            units_index: (B,) long: the unit in [0, num_units) of each row of the batch.
            num_units: U, the number of privacy units in the batch.
        """
        if self._capturing:
            raise RuntimeError("PerUnitClipper.capture is not re-entrant.")
        self._units = UnitGrouping(units_index, num_units)
        self._records = []
        self._modes_decided = False
        for s in self.states.values():
            s.reset()
        params = self.params
        for p in params:
            p.requires_grad_(False)
        self._capturing = True
        try:
            yield self
        finally:
            self._capturing = False
            for p in params:
                p.requires_grad_(True)
            self._records = []

    # ------------------------------------------------------------------ hooks
    def _on_forward(self, owner: Owner, module: nn.Module, args: tuple, output) -> None:
        if not self._capturing or self._paused:
            return
        what = f"{owner.name} ({type(module).__name__})"
        if not isinstance(output, torch.Tensor):
            raise RuntimeError(
                f"{what} has trainable parameters but returns a non-tensor output; memsinks cannot get its "
                "per-example gradients. Freeze it."
            )
        if not torch.is_grad_enabled():
            return
        rows = self._units.index.numel()
        if output.dim() == 0 or output.shape[0] != rows:
            raise RuntimeError(
                f"{what} returned an output of shape {tuple(output.shape)} for a batch of {rows} rows: its per-row "
                "gradients cannot be told apart. This happens when an input is broadcast over the batch, such as "
                "position_ids of shape (1, T) (Opacus issue #841); pass per-row inputs (position_ids of shape (B, T))."
            )
        record = HookRecord(owner, owner.handler.capture(module, args), tuple(output.shape))
        self._records.append(record)
        if not output.requires_grad:
            output.requires_grad_(True)
        output.register_hook(partial(self._on_grad, record))

    def _on_grad(self, record: HookRecord, g: torch.Tensor) -> None:
        if not self._modes_decided:
            self._decide_modes()
        owner = record.owner
        with self.paused():
            for param, contribution in owner.handler.contributions(owner.module, record.saved, g, owner.owned):
                self.states[id(param)].add(contribution)
        record.saved = None  # free the saved inputs as soon as they are used

    def _decide_modes(self) -> None:
        """Per parameter: materialise per-row gradients ("hooks") or keep factors ("ghost")."""
        self._modes_decided = True
        if self.clipping == "hooks":
            return
        ghost_memory: dict[int, int] = {}
        for record in self._records:
            for pname, p in record.owner.owned.items():
                if pname in record.owner.handler.outer_params and record.saved is not None:
                    ghost_memory[id(p)] = ghost_memory.get(id(p), 0) + _outer_memory_estimate(record, p)
        units = self._units.count
        for state in self.states.values():
            if not state.ghost_capable:
                state.mode = "hooks"
            elif self.clipping == "ghost":
                state.mode = "ghost"
            else:
                materialised = units * state.param.numel()
                factors = ghost_memory.get(id(state.param), math.inf)
                state.mode = "ghost" if materialised > AUTO_MEMORY_RATIO * factors else "hooks"

    def modes(self) -> dict[str, str]:
        """Parameter name -> "hooks" or "ghost" as decided for the last batch."""
        return {s.name: s.mode for s in self.states.values()}

    # ------------------------------------------------------------------ clipping
    def clip_and_accumulate(self, max_grad_norm: float | None = None) -> torch.Tensor:
        """Norms of the last captured batch's units, clip factors, and ``p.summed_grad += sum_u c_u G_u``.

        Returns the (U,) per-unit gradient norms before clipping.
        """
        units = self._units
        if units is None:
            raise RuntimeError("clip_and_accumulate called before any capture().")
        c_max = self.max_grad_norm if max_grad_norm is None else float(max_grad_norm)
        device = units.index.device
        sq = torch.zeros(units.count, device=device, dtype=torch.float32)
        for state in self.states.values():
            sq += state.squared_norms(units).to(device, torch.float32)
        norms = sq.sqrt()
        factors = (c_max / (norms + CLIP_EPS)).clamp(max=1.0)
        row_factors = factors[units.index]
        for state in self.states.values():
            p = state.param
            grad = state.clipped_sum(units, factors, row_factors)
            if getattr(p, "summed_grad", None) is None:
                p.summed_grad = torch.zeros_like(p)
            if grad is not None:
                p.summed_grad.add_(grad.view_as(p).to(p.summed_grad.dtype))
            state.reset()
        self.last_norms, self.last_clip_factors = norms, factors
        return norms


def _outer_memory_estimate(record: HookRecord, p: nn.Parameter) -> int:
    """Elements a ghost contribution of ``p`` would keep: tokens x (left width + right width)."""
    x = record.saved[0]
    tokens = 1
    for d in record.out_shape[:-1]:
        tokens *= d
    if not x.is_floating_point():  # an embedding: index + output gradient
        return tokens * (1 + record.out_shape[-1])
    return tokens * (x.shape[-1] + record.out_shape[-1])
