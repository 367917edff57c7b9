"""Per-unit gradient norms and the sum of clipped per-unit gradients, in one backward pass.

DP-SGD needs, for every privacy unit ``u`` of a batch, the norm of its gradient ``G_u``
(all trainable parameters together), a clip factor ``c_u = min(1, C / ||G_u||)`` and the
sum ``sum_u c_u G_u``. Opacus's hooks mode materialises every ``G_u`` *and* lets autograd
compute the ordinary batch gradient it then throws away; its ghost mode runs a second
backward pass. This module does the book-keeping variant (Bu et al. 2023, "Differentially
private optimization on large model at small cost", ICML): during the one backward pass
the trainable parameters do not require grad, so autograd computes no weight gradients
at all; forward hooks keep each layer's input and a tensor hook its output gradient, and
after the pass

- ``"hooks"`` parameters have had their per-row gradients materialised from those two
  factors in the hook (the same multiply-adds the ordinary weight gradient costs), so the
  norms and the clipped sum are cheap reductions;
- ``"ghost"`` parameters get their norms from Gram matrices of the factors
  (``||sum_t a_t g_t^T||^2 = sum_{s,t} (a_s.a_t)(g_s.g_t)``, Li et al. 2022 "Large language
  models can be strong differentially private learners") and the clipped sum from one
  matmul with the output gradients scaled by the clip factors;
- ``"auto"`` materialises, except where that would take more than ``AUTO_MEMORY_RATIO``
  times the memory of the factors (input embeddings, above all).

Every gradient that reaches a parameter is written as a sum over tokens of outer products
``left_t (P) x right_t (Q)`` in the parameter's own (P, Q) layout (``_Outer``), or as a
per-row gradient tensor (``_Dense``: biases, norm scales, anything through the functorch
fallback). A parameter shared by several modules (GPT-2's tied input/output embedding)
collects the contributions of all of them, so its per-unit norm is the norm of their sum,
cross terms included. Units made of several rows (user-level DP) have their rows' tokens
pooled before the norms are taken.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from functools import partial
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from memsinks.layers import SinkDownProjection, SinkUpProjection, linear_weight

CLIP_EPS = 1e-6  # added to the norm before dividing, as Opacus does

#: ``clipping="auto"`` materialises a parameter's per-unit gradients (the fastest way on the
#: models measured in benchmarks/dp_overhead.py) unless they would take more than this many
#: times the memory of the factors ghost clipping keeps instead (embeddings: vocabulary x
#: width per unit against tokens x width, so they go ghost)
AUTO_MEMORY_RATIO = 2.0


# ----------------------------------------------------------------------------- factors
@dataclass
class _Index:
    """A one-hot left factor given by its indices: (B, T) ints into ``size`` rows (embeddings)."""

    index: torch.Tensor
    size: int


@dataclass
class _Outer:
    """Per-row gradient ``sum_t left[b, t] (x) right[b, t]`` in the parameter's (P, Q) layout.

    ``left``: (B, T, P) tensor or ``_Index``; ``right``: (B, T, Q).
    """

    left: torch.Tensor | _Index
    right: torch.Tensor

    def memory(self) -> int:
        """Elements held to compute this contribution's norm and clipped sum later (ghost)."""
        b, t, q = self.right.shape
        p = 1 if isinstance(self.left, _Index) else self.left.shape[-1]
        return b * t * (p + q)

    def shape(self) -> tuple[int, int, int]:
        b, _, q = self.right.shape
        return b, (self.left.size if isinstance(self.left, _Index) else self.left.shape[-1]), q

    def write_per_row(self, out: torch.Tensor, accumulate: bool) -> None:
        """Write (or add) the (B, P, Q) per-row gradients into ``out``."""
        right = self.right
        if isinstance(self.left, _Index):
            b, p, q = self.shape()
            if not accumulate:
                out.zero_()
            rows = (torch.arange(b, device=right.device)[:, None] * p + self.left.index).reshape(-1)
            out.view(b * p, q).index_add_(0, rows, right.reshape(-1, q))
        elif accumulate:
            out.baddbmm_(self.left.transpose(1, 2), right)
        else:
            torch.bmm(self.left.transpose(1, 2), right, out=out)


@dataclass
class _Dense:
    """Per-row gradients already materialised: (B, *param.shape)."""

    per_row: torch.Tensor


def _rows(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(b, ..., k) -> (B, N, k), expanding a broadcast batch of 1 (HF's (1, T) position ids)."""
    if x.shape[0] != batch:
        if x.shape[0] != 1:
            raise RuntimeError(f"A layer input has batch {x.shape[0]} where its output gradient has {batch}.")
        x = x.expand(batch, *x.shape[1:])
    if x.dim() == 1:
        return x.reshape(batch, 1, 1)
    if x.dim() == 2:
        return x.reshape(batch, 1, x.shape[-1])
    return x.reshape(batch, -1, x.shape[-1])


def _index_rows(index: torch.Tensor, batch: int) -> torch.Tensor:
    """(b, ...) ints -> (B, N), expanding a broadcast batch of 1."""
    if index.shape[0] != batch:
        index = index.expand(batch, *index.shape[1:])
    return index.reshape(batch, -1)


# ---------------------------------------------------------------------------- handlers
class _Handler:
    """How one module type's parameters get per-row gradients from its input and output gradient.

    ``owned`` (found once, while the parameters still require grad) maps names relative to
    the module to the trainable parameters this handler accounts for; ``contributions``
    yields ``(parameter, _Outer | _Dense)`` for those only.
    """

    #: names (relative to the module) of the parameters this handler gives outer products for
    outer_params: tuple[str, ...] = ()

    def owned(self, module: nn.Module) -> dict[str, nn.Parameter]:
        return {n: p for n, p in module.named_parameters(recurse=False) if p.requires_grad}

    def capture(self, module: nn.Module, args: tuple) -> tuple:
        return (args[0],)

    def contributions(self, module: nn.Module, saved: tuple, g: torch.Tensor, owned: dict) -> Iterator[tuple]:
        raise NotImplementedError


def _linear_like(weight, bias, x: torch.Tensor, g: torch.Tensor, conv1d: bool):
    """Contributions of ``y = x W^T + b`` (Linear, weight (out, in)) or ``x W + b`` (Conv1D, weight (in, out)).

    ``weight`` / ``bias``: the parameters to account for, or None when frozen.
    """
    b = g.shape[0]
    g2 = _rows(g, b)
    x2 = _rows(x, b)
    if weight is not None:
        yield weight, (_Outer(x2, g2) if conv1d else _Outer(g2, x2))
    if bias is not None:
        yield bias, _Dense(g2.sum(1))


class _LinearHandler(_Handler):
    outer_params = ("weight",)

    def contributions(self, module, saved, g, owned):
        yield from _linear_like(owned.get("weight"), owned.get("bias"), saved[0], g, conv1d=isinstance(module, Conv1D))


class _EmbeddingHandler(_Handler):
    outer_params = ("weight",)

    def contributions(self, module, saved, g, owned):
        if "weight" not in owned:
            return
        b = g.shape[0]
        index = _index_rows(saved[0], b)
        g2 = _rows(g, b)
        if module.padding_idx is not None:  # autograd gives the padding row no gradient
            g2 = g2 * (index != module.padding_idx).unsqueeze(-1).to(g2.dtype)
        yield owned["weight"], _Outer(_Index(index, module.num_embeddings), g2)


class _NormHandler(_Handler):
    """nn.LayerNorm / nn.RMSNorm: per-row gradients of the elementwise scale (and shift)."""

    def contributions(self, module, saved, g, owned):
        x = saved[0]
        shape = tuple(module.normalized_shape)
        b = g.shape[0]
        g2 = g.reshape(b, -1, *shape)
        if "weight" in owned:
            if isinstance(module, nn.LayerNorm):
                xhat = F.layer_norm(x, shape, eps=module.eps)
            else:
                xhat = F.rms_norm(x, shape, eps=module.eps)
            yield owned["weight"], _Dense((g2 * xhat.reshape(b, -1, *shape).to(g2.dtype)).sum(1))
        if "bias" in owned:
            yield owned["bias"], _Dense(g2.sum(1))


class _HFRMSNormHandler(_Handler):
    """Transformers' RMSNorm modules (Llama, Mistral, Qwen2...): ``weight * x / rms(x)``, computed in float32.

    Not ``nn.RMSNorm``, so recognised by name and attributes; its per-row gradient is
    ``sum_t g_t * xhat_t``, cheaper than the functorch fallback (the reference check at
    ``make_private`` confirms the formula on the model).
    """

    def contributions(self, module, saved, g, owned):
        if "weight" not in owned:
            return
        x = saved[0]
        xf = x.float()
        xhat = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)).to(x.dtype)
        b = g.shape[0]
        yield owned["weight"], _Dense((g.reshape(b, -1, g.shape[-1]) * xhat.reshape(b, -1, x.shape[-1])).sum(1))


def _is_hf_rms_norm(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon")
            and isinstance(weight, nn.Parameter) and weight.dim() == 1
            and [n for n, _ in module.named_parameters(recurse=False)] == ["weight"])


class _FunctorchHandler(_Handler):
    """Any other module with its own parameters, called on one tensor: per-row vector-Jacobian
    products of its forward with ``torch.func`` (what Opacus's functorch mode does).

    Exact for any module whose output rows depend only on the same input rows (no batch
    statistics); the reference check run by ``make_private`` verifies it on the model.
    """

    def __init__(self, clipper: "PerUnitClipper"):
        self.clipper = clipper

    def capture(self, module, args):
        if len(args) != 1 or not isinstance(args[0], torch.Tensor):
            raise RuntimeError(
                f"{type(module).__name__} has trainable parameters and is called with {len(args)} positional "
                "arguments; memsinks computes per-example gradients of such modules only when they take one tensor. "
                "Freeze its parameters (param.requires_grad_(False))."
            )
        return (args[0],)

    def contributions(self, module, saved, g, owned):
        from torch.func import functional_call, grad, vmap

        b = g.shape[0]
        x = saved[0]
        if x.shape[0] != b:
            x = x.expand(b, *x.shape[1:])

        def one_row(params, xb, gb):
            out = functional_call(module, params, (xb.unsqueeze(0),))
            return (out * gb.unsqueeze(0)).sum()

        detached = {n: p.detach() for n, p in owned.items()}
        with self.clipper._suspended():
            grads = vmap(grad(one_row), in_dims=(None, 0, 0))(detached, x, g)
        for name, p in owned.items():
            yield p, _Dense(grads[name])


class _SinkUpHandler(_Handler):
    """``SinkUpProjection``: its base projection is applied with F.linear/addmm, not its forward,
    so this handler accounts for the base's parameters as well as the pool's."""

    outer_params = ("base.weight", "sink_weight")

    def owned(self, module):
        own = {n: p for n, p in module.named_parameters(recurse=False) if p.requires_grad}
        own.update({"base." + n: p for n, p in module.base.named_parameters(recurse=False) if p.requires_grad})
        return own

    def contributions(self, module, saved, g, owned):
        x = saved[0]
        out = linear_weight(module.base).shape[0]
        conv1d = isinstance(module.base, Conv1D)
        yield from _linear_like(owned.get("base.weight"), owned.get("base.bias"), x, g[..., :out], conv1d)
        yield from _linear_like(owned.get("sink_weight"), owned.get("sink_bias"), x, g[..., out:], conv1d=False)


class _SinkDownAppendHandler(_SinkUpHandler):
    """``SinkDownProjection`` under ``append``: the base units go through the base weight (not its
    forward), the pool's units, masked by the batch's routing, through ``sink_weight``."""

    def capture(self, module, args):
        return (args[0], module.router.mask_for(module.layer))

    def contributions(self, module, saved, g, owned):
        h, mask = saved
        n_base = h.shape[-1] - module.pool
        conv1d = isinstance(module.base, Conv1D)
        yield from _linear_like(owned.get("base.weight"), owned.get("base.bias"), h[..., :n_base], g, conv1d)
        if mask is not None and "sink_weight" in owned:
            pool = h[..., n_base:] * mask.to(h.dtype)
            yield from _linear_like(owned["sink_weight"], None, pool, g, conv1d=False)


def _handler_for(module: nn.Module, clipper: "PerUnitClipper") -> _Handler:
    if isinstance(module, (nn.Linear, Conv1D)):
        return _LinearHandler()
    if isinstance(module, nn.Embedding):
        if module.max_norm is not None or module.scale_grad_by_freq or module.sparse:
            raise ValueError(
                f"{type(module).__name__} with max_norm, scale_grad_by_freq or sparse gradients cannot get "
                "per-example gradients; use a plain embedding or freeze it."
            )
        return _EmbeddingHandler()
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return _NormHandler()
    if _is_hf_rms_norm(module):
        return _HFRMSNormHandler()
    return _FunctorchHandler(clipper)


# ---------------------------------------------------------------------------- grouping
class _Units:
    """Which unit each row of a physical batch belongs to.

    ``index``: (B,) long in [0, U). When every unit has one row the per-row quantities are
    per-unit ones up to this permutation; otherwise rows are pooled into a padded
    (U, rows_per_unit * T, k) layout before norms are taken.
    """

    def __init__(self, index: torch.Tensor, count: int):
        self.index = index
        self.count = count
        self.one_row_each = count == index.numel()
        if not self.one_row_each:
            sizes = torch.bincount(index, minlength=count)
            self.width = int(sizes.max())
            order = torch.argsort(index, stable=True)
            starts = torch.cumsum(sizes, 0) - sizes
            slot = torch.empty_like(index)
            slot[order] = torch.arange(index.numel(), device=index.device) - starts[index[order]]
            self.flat_slot = index * self.width + slot  # row -> position in the (U * width) padded layout

    def pool(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (U, width * T, ...), each unit's rows one after the other, zero padded."""
        out = t.new_zeros((self.count * self.width,) + tuple(t.shape[1:]))
        out[self.flat_slot] = t
        return out.reshape(self.count, self.width * t.shape[1], *t.shape[2:])

    def to_units(self, per_row: torch.Tensor) -> torch.Tensor:
        """Sum per-row values (B, ...) into per-unit ones (U, ...)."""
        out = per_row.new_zeros((self.count,) + tuple(per_row.shape[1:]))
        return out.index_add_(0, self.index, per_row)


def _gram(a: torch.Tensor | _Index, b: torch.Tensor | _Index) -> torch.Tensor:
    """(U, S, .) x (U, T, .) -> (U, S, T) inner products of the token factors."""
    if isinstance(a, _Index) and isinstance(b, _Index):
        return (a.index[:, :, None] == b.index[:, None, :]).float()
    if isinstance(a, _Index):
        return torch.gather(b, 2, a.index[:, None, :].expand(-1, b.shape[1], -1)).transpose(1, 2)
    if isinstance(b, _Index):
        return torch.gather(a, 2, b.index[:, None, :].expand(-1, a.shape[1], -1))
    return torch.bmm(a, b.transpose(1, 2))


# -------------------------------------------------------------------------- the clipper
class _ParamState:
    __slots__ = ("name", "param", "ghost_capable", "mode", "per_row", "outers", "buffer")

    def __init__(self, name: str, param: nn.Parameter, ghost_capable: bool):
        self.name = name
        self.param = param
        self.ghost_capable = ghost_capable
        self.mode = "hooks"
        self.per_row: torch.Tensor | None = None  # (B, *param.shape) this batch, or None
        self.outers: list[_Outer] = []
        # CPU only: the per-row gradients of the last batch, kept for the next one. Writing into
        # memory already mapped spares the page faults of a fresh (B x parameter) tensor every
        # step (about a tenth of the step time in benchmarks/dp_overhead.py), at the price of
        # holding it through the forward. CUDA's caching allocator reuses memory by itself.
        self.buffer: torch.Tensor | None = None

    def add_outer(self, outer: _Outer) -> None:
        """Materialise an outer-product contribution into the per-row gradients."""
        b, p, q = outer.shape()
        if self.per_row is None:
            buf = self.buffer
            if buf is None or buf.shape != (b, p, q) or buf.dtype != outer.right.dtype or buf.device != outer.right.device:
                buf = torch.empty((b, p, q), dtype=outer.right.dtype, device=outer.right.device)
                self.buffer = buf if buf.device.type == "cpu" else None
            outer.write_per_row(buf, accumulate=False)
            self.per_row = buf.view(b, *self.param.shape)
        else:
            outer.write_per_row(self.per_row.view(b, p, q), accumulate=True)


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
        if clipping not in ("auto", "hooks", "ghost"):
            raise ValueError(f"clipping must be 'auto', 'hooks' or 'ghost'; got {clipping!r}.")
        self.model = model
        self.max_grad_norm = float(max_grad_norm)
        self.clipping = clipping
        self._capturing = False
        self._suspend = 0
        self._records: list = []
        self._units: _Units | None = None
        self._modes_decided = False
        self._handles: list = []
        self.states: dict[int, _ParamState] = {}
        self.module_names: dict[int, str] = {}
        self.last_norms: torch.Tensor | None = None
        self.last_clip_factors: torch.Tensor | None = None
        self._plan()

    # ------------------------------------------------------------------ set-up
    def _plan(self) -> None:
        names = {id(p): n for n, p in self.model.named_parameters()}
        modules = dict(self.model.named_modules())
        owners: list[tuple[str, nn.Module, _Handler]] = []
        excluded: set[int] = set()
        for name, module in modules.items():
            if isinstance(module, SinkUpProjection):
                owners.append((name, module, _SinkUpHandler()))
                excluded.add(id(module.base))
            elif isinstance(module, SinkDownProjection) and module.placement == "append":
                owners.append((name, module, _SinkDownAppendHandler()))
                excluded.add(id(module.base))
        for name, module in modules.items():
            if id(module) in excluded or any(m is module for _, m, _ in owners):
                continue
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                owners.append((name, module, _handler_for(module, self)))
        ghost_capable: dict[int, bool] = {}
        self.owners = []
        for name, module, handler in owners:
            owned = handler.owned(module)
            if not owned:
                continue
            self.module_names[id(module)] = name
            self.owners.append((name, module, handler, owned))
            for pname, p in owned.items():
                outer = pname in handler.outer_params
                ghost_capable[id(p)] = ghost_capable.get(id(p), True) and outer
                if id(p) not in self.states:
                    self.states[id(p)] = _ParamState(names.get(id(p), f"{name}.{pname}"), p, outer)
            self._handles.append(module.register_forward_hook(partial(self._on_forward, handler, owned)))
        for state in self.states.values():
            state.ghost_capable = ghost_capable[id(state.param)]

    def close(self) -> None:
        """Remove the hooks and free the kept per-row buffers."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.release_buffers()

    def release_buffers(self) -> None:
        """Free the per-row gradient buffers kept between batches (they are re-made when needed)."""
        for state in self.states.values():
            state.buffer = None

    @property
    def params(self) -> list[nn.Parameter]:
        return [s.param for s in self.states.values()]

    @contextlib.contextmanager
    def _suspended(self):
        self._suspend += 1
        try:
            yield
        finally:
            self._suspend -= 1

    @contextlib.contextmanager
    def capture(self, units_index: torch.Tensor, num_units: int):
        """Record per-row gradient factors during the forward and backward run inside.

        Args:
            units_index: (B,) long: the unit in [0, num_units) of each row of the batch.
            num_units: U, the number of privacy units in the batch.
        """
        if self._capturing:
            raise RuntimeError("PerUnitClipper.capture is not re-entrant.")
        self._units = _Units(units_index, num_units)
        self._records = []
        self._modes_decided = False
        for s in self.states.values():
            s.per_row, s.outers = None, []
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
    def _on_forward(self, handler: _Handler, owned: dict, module: nn.Module, args: tuple, output) -> None:
        if not self._capturing or self._suspend:
            return
        if not isinstance(output, torch.Tensor):
            raise RuntimeError(
                f"{self.module_names.get(id(module), type(module).__name__)} ({type(module).__name__}) has trainable "
                "parameters but returns a non-tensor output; memsinks cannot get its per-example gradients. Freeze it."
            )
        if not torch.is_grad_enabled():
            return
        rows = self._units.index.numel()
        if output.dim() == 0 or output.shape[0] != rows:
            raise RuntimeError(
                f"{self.module_names.get(id(module), type(module).__name__)} ({type(module).__name__}) returned an output "
                f"of shape {tuple(output.shape)} for a batch of {rows} rows: its per-row gradients cannot be told apart. "
                "This happens when an input is broadcast over the batch, such as position_ids of shape (1, T) "
                "(Opacus issue #841); pass per-row inputs (position_ids of shape (B, T))."
            )
        record = [handler, module, handler.capture(module, args), tuple(output.shape), owned]
        self._records.append(record)
        if not output.requires_grad:
            output.requires_grad_(True)
        output.register_hook(partial(self._on_grad, record))

    def _on_grad(self, record: list, g: torch.Tensor) -> None:
        if not self._modes_decided:
            self._decide_modes()
        handler, module, saved, _, owned = record
        for param, contribution in handler.contributions(module, saved, g, owned):
            state = self.states[id(param)]
            dtype = param.dtype
            if isinstance(contribution, _Dense):
                state.per_row = _add(state.per_row, contribution.per_row.to(dtype).reshape(-1, *param.shape))
                continue
            contribution = _Outer(
                contribution.left if isinstance(contribution.left, _Index) else contribution.left.to(dtype),
                contribution.right.to(dtype),
            )
            if state.mode == "ghost":
                state.outers.append(contribution)
            else:
                state.add_outer(contribution)
        record[2] = None  # free the saved inputs as soon as they are used

    def _decide_modes(self) -> None:
        """Per parameter: materialise per-row gradients ("hooks") or keep factors ("ghost")."""
        self._modes_decided = True
        if self.clipping == "hooks":
            return
        ghost_memory: dict[int, int] = {}
        for handler, module, saved, out_shape, owned in self._records:
            for pname, p in owned.items():
                if pname in handler.outer_params and saved is not None:
                    ghost_memory[id(p)] = ghost_memory.get(id(p), 0) + _outer_memory_estimate(saved, out_shape, p)
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
            sq += self._squared_norms(state).to(device, torch.float32)
        norms = sq.sqrt()
        factors = (c_max / (norms + CLIP_EPS)).clamp(max=1.0)
        row_factors = factors[units.index]
        for state in self.states.values():
            p = state.param
            grad = self._clipped_sum(state, factors, row_factors)
            if getattr(p, "summed_grad", None) is None:
                p.summed_grad = torch.zeros_like(p)
            if grad is not None:
                p.summed_grad.add_(grad.view_as(p).to(p.summed_grad.dtype))
            state.per_row, state.outers = None, []
        self.last_norms, self.last_clip_factors = norms, factors
        return norms

    def _squared_norms(self, state: _ParamState) -> torch.Tensor:
        units = self._units
        total = torch.zeros(units.count, device=units.index.device, dtype=torch.float32)
        if state.per_row is not None:
            per = state.per_row if units.one_row_each else units.to_units(state.per_row)
            sq = torch.linalg.vector_norm(per.reshape(per.shape[0], -1), dim=1, dtype=torch.float32).pow(2)
            total = total + (units.to_units(sq) if units.one_row_each else sq)
        outers = state.outers
        if outers:
            lefts = [o.left if units.one_row_each else _pool_left(units, o.left) for o in outers]
            rights = [o.right if units.one_row_each else units.pool(o.right) for o in outers]
            sq = torch.zeros(lefts[0].index.shape[0] if isinstance(lefts[0], _Index) else lefts[0].shape[0],
                             device=total.device, dtype=torch.float32)
            for i in range(len(outers)):
                for j in range(i, len(outers)):
                    term = (_gram(lefts[i], lefts[j]) * _gram(rights[i], rights[j])).sum((1, 2)).float()
                    sq = sq + (term if i == j else 2 * term)
            total = total + (units.to_units(sq) if units.one_row_each else sq)
        return total

    def _clipped_sum(self, state: _ParamState, factors: torch.Tensor, row_factors: torch.Tensor) -> torch.Tensor | None:
        units = self._units
        grad = None
        if state.per_row is not None:
            if units.one_row_each:
                grad = torch.tensordot(row_factors.to(state.per_row.dtype), state.per_row, dims=1)
            else:
                grad = torch.tensordot(factors.to(state.per_row.dtype), units.to_units(state.per_row), dims=1)
        for o in state.outers:
            scale = row_factors.to(o.right.dtype)[:, None, None]
            q = o.right.shape[-1]
            if isinstance(o.left, _Index):
                g = o.right.new_zeros(o.left.size, q)
                g.index_add_(0, o.left.index.reshape(-1), (o.right * scale).reshape(-1, q))
            else:
                p_dim = o.left.shape[-1]
                if p_dim <= q:
                    g = (o.left * scale).reshape(-1, p_dim).t() @ o.right.reshape(-1, q)
                else:
                    g = o.left.reshape(-1, p_dim).t() @ (o.right * scale).reshape(-1, q)
            grad = g if grad is None else grad + g.view_as(grad)
        return grad


def _add(acc: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    return value if acc is None else acc.add_(value)


def _pool_left(units: _Units, left: torch.Tensor | _Index) -> torch.Tensor | _Index:
    if isinstance(left, _Index):
        return _Index(units.pool(left.index), left.size)
    return units.pool(left)


def _outer_memory_estimate(saved: tuple, out_shape: tuple, p: nn.Parameter) -> int:
    """Elements a ghost contribution of ``p`` would keep: tokens x (left width + right width)."""
    x = saved[0]
    tokens = 1
    for d in out_shape[:-1]:
        tokens *= d
    if not x.is_floating_point():  # an embedding: index + output gradient
        return tokens * (1 + out_shape[-1])
    return tokens * (x.shape[-1] + out_shape[-1])

