"""Wrappers on an MLP's projections that carry the sinks; each knows how to attach, save and unload itself.

A sink down projection wraps the down projection (GPT-2 ``c_proj``, Llama ``down_proj``, ...)
and multiplies its input, the MLP hidden activations, by the current batch's mask before
projecting. It comes in two variants, one per placement:

- ``SplitSinkDownProjection``: the pool is the last ``pool`` of the MLP's own units. With a
  learning-rate scale (``SinksConfig.sink_lr_scale``) the up projections are wrapped too
  (``SplitSinkUpProjection``), and both store the pool divided by the scale.
- ``AppendSinkDownProjection``: the pool is a separate set of units. ``SinkUpProjection``
  widens each up projection (Llama: gate and up) by the pool's rows, and the down wrapper adds
  the pool's contribution, whose weights start at zero, to the untouched base projection, so
  the base model's output is reproduced exactly before training.

All wrappers present the stock state-dict layout: ``state_dict()`` returns the widened
``weight``/``bias`` under the original module's key (so ``save_pretrained`` writes a checkpoint
that stock transformers can read, with the MLP width stated in ``config.json``), and
``load_state_dict`` accepts that layout back. ``unload`` turns a wrapper back into a plain
projection with a constant factor per pool unit baked in (or the pool pruned).
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from memsinks.joint_linear import joint_linear
from memsinks.projection import has_bias, in_out, linear_weight, new_projection, project
from memsinks.routing import SinkRouter


class _StockLayout(nn.Module):
    """Maps ``<prefix>base.<name>`` + sink tensors to the stock ``<prefix><name>`` layout and back."""

    base: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.register_state_dict_post_hook(_to_stock_layout)
        self.register_load_state_dict_pre_hook(_from_stock_layout)

    def _fqn_modifiers(self) -> dict[str, str]:
        """Where the stock names live, for ``torch.distributed.checkpoint``.

        FSDP2 (and accelerate's FSDP saving) gather weights with ``get_model_state_dict``, which
        walks each state-dict key back to a module attribute. The stock key ``<prefix>weight``
        names no attribute of this wrapper; this says it is found under ``base``.
        """
        return {"weight": "base", "bias": "base"}

    def _merge(self, state: dict, prefix: str) -> None:
        """Fold the pool's tensors into the widened stock tensors (wrappers with their own pool tensors)."""

    def _split(self, state: dict, prefix: str) -> None:
        """Split widened stock tensors into base and pool tensors (wrappers with their own pool tensors)."""


def _to_stock_layout(module: _StockLayout, state: dict, prefix: str, local_metadata) -> None:
    base_prefix = prefix + "base."
    for key in [k for k in state if k.startswith(base_prefix)]:
        state[prefix + key[len(base_prefix):]] = state.pop(key)
    module._merge(state, prefix)


def _from_stock_layout(module: _StockLayout, state: dict, prefix: str, *args) -> None:
    if any(k.startswith(prefix + "base.") for k in state):
        return
    module._split(state, prefix)
    own = {prefix + name for name, _ in module.named_parameters(recurse=False)}
    own |= {prefix + name for name, _ in module.named_buffers(recurse=False)}
    for key in [k for k in state if k.startswith(prefix) and k not in own]:
        state[prefix + "base." + key[len(prefix):]] = state.pop(key)


def _check_width(key: str, got: int, expected: int) -> None:
    if got != expected:
        raise RuntimeError(
            f"{key}: the checkpoint's MLP has {got} units where this model with sinks has {expected}. "
            "Load a checkpoint saved with the same SinksConfig (memsinks.from_pretrained), or attach "
            "sinks after loading the base weights."
        )


class SinkUpProjection(_StockLayout):
    """An up (or gate) projection widened by ``pool`` appended units.

    ``forward(x)`` returns (..., out + pool): the base projection's units, then the pool's.
    The pool's rows start as random as the base rows (same standard deviation); with
    ``paired`` the second half of the rows equals the first (mirrored pairs, see
    ``AppendSinkDownProjection``) and each half is projected by its own matmul, so the two
    halves' outputs stay bit-identical until training moves them apart.

    The pool's parameters are stored divided by ``scale`` (a power of two) and multiplied back
    in the forward, so that Adam moves the effective weights ``scale`` times faster;
    ``state_dict`` and ``unload`` give the effective weights.

    With the model's ``router`` given, a forward whose pools are all off (drop mode) computes the
    base units alone, (..., out): the down projection would multiply the pool's by zero.
    """

    def __init__(self, base: nn.Module, pool: int, generator: torch.Generator, scale: float = 1.0,
                 paired: bool = False, router: SinkRouter | None = None):
        super().__init__()
        self.base = base
        self.__dict__["router"] = router  # shared, not a submodule: one router per model
        in_features, _ = in_out(base)
        w = linear_weight(base)
        std = float(w.detach().float().std()) or 0.02
        rows = pool // 2 if paired else pool
        init = torch.randn(rows, in_features, generator=generator) * std
        if paired:
            init = torch.cat([init, init])
        self.sink_weight = nn.Parameter((init / scale).to(device=w.device, dtype=w.dtype))
        self.sink_bias = (
            nn.Parameter(torch.zeros(pool, device=w.device, dtype=w.dtype)) if has_bias(base) else None
        )
        self.pool = pool
        self.scale = float(scale)
        self.paired = paired

    def effective(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """A stored pool tensor as the weight it stands for (times ``scale``)."""
        if tensor is None or self.scale == 1.0:
            return tensor
        return tensor * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) -> (..., out + pool), or (..., out) when the router has the pools off."""
        if self.router is not None and self.router.appended_pools_off():
            return project(self.base, x)
        w, b = self.effective(self.sink_weight), self.effective(self.sink_bias)
        if not self.paired:
            pool_parts = [(w, b)]
        else:
            half = self.pool // 2
            pool_parts = [(w[i * half:(i + 1) * half], None if b is None else b[i * half:(i + 1) * half])
                          for i in (0, 1)]
        if x.device.type == "cpu" and (type(self.base) is nn.Linear or isinstance(self.base, Conv1D)):
            return joint_linear(x, [(linear_weight(self.base), self.base.bias)] + pool_parts)
        # a base with its own forward (a peft adapter, a quantized layer), or an accelerator, where writing into
        # a column slice may take another kernel than the stock layer's (bit-exactness is verified on CPU only)
        return torch.cat([project(self.base, x)] + [F.linear(x, pw, pb) for pw, pb in pool_parts], dim=-1)

    def _merge(self, state: dict, prefix: str) -> None:
        conv = isinstance(self.base, Conv1D)
        w = self.effective(state.pop(prefix + "sink_weight"))
        state[prefix + "weight"] = torch.cat([state[prefix + "weight"], w.t() if conv else w], dim=1 if conv else 0)
        if prefix + "sink_bias" in state:
            state[prefix + "bias"] = torch.cat([state[prefix + "bias"], self.effective(state.pop(prefix + "sink_bias"))])

    def _split(self, state: dict, prefix: str) -> None:
        conv = isinstance(self.base, Conv1D)
        key = prefix + "weight"
        if key not in state:
            return
        w = state[key]
        n = self.pool
        out_dim = 1 if conv else 0
        _check_width(key, w.shape[out_dim], linear_weight(self.base).shape[0] + n)
        base_w, sink_w = w.narrow(out_dim, 0, w.shape[out_dim] - n), w.narrow(out_dim, w.shape[out_dim] - n, n)
        state[key] = base_w
        state[prefix + "sink_weight"] = (sink_w.t() if conv else sink_w) / self.scale
        if self.sink_bias is not None and prefix + "bias" in state:
            b = state[prefix + "bias"]
            state[prefix + "bias"], state[prefix + "sink_bias"] = b[:-n], b[-n:] / self.scale

    def unload(self, prune: bool) -> nn.Module:
        """The plain projection: ``base`` itself when pruning, else base and pool rows in one widened module."""
        if prune:
            return self.base
        w = torch.cat([linear_weight(self.base).detach(), self.effective(self.sink_weight.detach())])
        b = None if self.sink_bias is None else torch.cat([self.base.bias.detach(), self.effective(self.sink_bias.detach())])
        return new_projection(self.base, w, b)

    def extra_repr(self) -> str:
        return f"pool={self.pool}, scale={self.scale:g}, paired={self.paired}"


def _tail_times(key: str, tensor: torch.Tensor, dim: int, width: int, pool: int, factor: float) -> torch.Tensor:
    """``tensor`` with its last ``pool`` entries along ``dim`` (of ``width``) multiplied by ``factor``.

    Built out of place: under FSDP2 a state dict holds sharded DTensors, and a slice of one along
    its sharded dim is a gathered copy, so an in-place product on a narrowed view would be lost.
    """
    _check_width(key, tensor.shape[dim], width)
    return torch.cat([tensor.narrow(dim, 0, width - pool), tensor.narrow(dim, width - pool, pool) * factor], dim=dim)


class _PoolFactors:
    """(units,) vectors of 1 for the shared units and ``scale`` for a split pool's last ``pool``, per device and dtype."""

    def __init__(self, pool: int, scale: float):
        self.pool, self.scale, self._cache = pool, scale, {}

    def like(self, t: torch.Tensor) -> torch.Tensor:
        key = (t.device, t.dtype, t.shape[-1])
        if key not in self._cache:
            f = torch.ones(t.shape[-1], dtype=t.dtype, device=t.device)
            f[-self.pool:] = self.scale
            self._cache[key] = f
        return self._cache[key]


class SplitSinkUpProjection(_StockLayout):
    """An up (or gate) projection whose last ``pool`` output units are a split pool trained ``scale`` times faster.

    Only used when ``SinksConfig.sink_lr_scale`` is not 1 under ``placement="split"``. The pool's
    rows (and bias entries) of ``base`` are stored divided by ``scale`` and the forward multiplies
    those output units back, so that Adam moves their effective weights ``scale`` times further per
    step, as ``SinkUpProjection`` does for an appended pool. ``base`` is called as a module, so a
    per-example gradient hook on it sees the stored weights' own gradient. ``state_dict`` and
    ``unload`` give the effective weights.
    """

    def __init__(self, base: nn.Module, pool: int, scale: float):
        super().__init__()
        self.base = base
        self.pool = pool
        self.scale = float(scale)
        self._factors = _PoolFactors(pool, self.scale)
        conv = isinstance(base, Conv1D)
        with torch.no_grad():
            base.weight.narrow(1 if conv else 0, base.weight.shape[1 if conv else 0] - pool, pool).div_(self.scale)
            if has_bias(base):
                base.bias[-pool:].div_(self.scale)

    @property
    def shared(self) -> int:
        return linear_weight(self.base).shape[0] - self.pool

    def _convert(self, state: dict, prefix: str, factor: float) -> None:
        """The weight and the bias of ``state`` each on its own: a sharded checkpoint may bring one without the other."""
        width = linear_weight(self.base).shape[0]
        key = prefix + "weight"
        if key in state:
            state[key] = _tail_times(key, state[key], 1 if isinstance(self.base, Conv1D) else 0, width, self.pool, factor)
        key = prefix + "bias"
        if key in state and has_bias(self.base):
            state[key] = _tail_times(key, state[key], 0, width, self.pool, factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) -> (..., units), the pool's units multiplied back by ``scale``."""
        out = self.base(x.contiguous())
        return out * self._factors.like(out)

    def _merge(self, state: dict, prefix: str) -> None:
        self._convert(state, prefix, self.scale)

    def _split(self, state: dict, prefix: str) -> None:
        self._convert(state, prefix, 1.0 / self.scale)

    def unload(self, prune: bool) -> nn.Module:
        """The plain projection with the effective weights (only the shared units' rows when pruning)."""
        w = linear_weight(self.base).detach().clone()
        b = self.base.bias.detach().clone() if has_bias(self.base) else None
        if prune:
            return new_projection(self.base, w[:self.shared], None if b is None else b[:self.shared])
        w[self.shared:] *= self.scale
        if b is not None:
            b[self.shared:] *= self.scale
        return new_projection(self.base, w, b)

    def extra_repr(self) -> str:
        return f"pool={self.pool}, scale={self.scale:g}"


class SinkDownProjection(_StockLayout):
    """The down projection of a block with sinks: masks its input units, then projects.

    The base of the two placement variants. ``base`` is the wrapped projection, ``layer`` the
    block index, ``pool`` the number of sink units, ``router`` the model's (shared) router
    whose ``mask_for(layer)`` gives the current batch's mask.
    """

    placement: ClassVar[str]

    def __init__(self, base: nn.Module, router: SinkRouter, layer: int, pool: int):
        super().__init__()
        self.base = base
        self.layer = layer
        self.pool = pool
        self.__dict__["router"] = router  # shared, not a submodule: one router per model

    @staticmethod
    def mask_width(width: int, pool: int) -> int:
        """How many units the router's mask of a block covers, for an MLP of ``width`` units."""
        raise NotImplementedError

    @classmethod
    def attach(cls, mlp: nn.Module, up: Sequence[str], down: str, router: SinkRouter, layer: int,
               pool: int) -> "SinkDownProjection":
        """Wrap ``mlp``'s projections named ``up`` and ``down`` in place; returns the down wrapper."""
        wrapper = cls(getattr(mlp, down), router, layer, pool)
        setattr(mlp, down, wrapper)
        return wrapper

    def _mask(self, h: torch.Tensor) -> torch.Tensor | None:
        mask = self.router.mask_for(self.layer)
        if mask is not None and mask.dtype != h.dtype:
            mask = mask.to(h.dtype)
        return mask

    def unload(self, factor: torch.Tensor, prune: bool) -> nn.Module:
        """The plain down projection that computes what this one does with pool unit ``u`` scaled by ``factor[u]``.

        Args:
            factor: float (pool,), a constant per pool unit (drop: 0, mean: p_mem, exclude: 0 or p_mem).
            prune: remove the pool units instead (``factor`` must then be all zero).
        """
        raise NotImplementedError

    def unload_up(self, up: nn.Module, prune: bool) -> nn.Module:
        """The plain module for one of the MLP's up projections when this block's sinks are unloaded."""
        raise NotImplementedError

    def unloaded_width(self, prune: bool) -> int:
        """The MLP's width after ``unload``."""
        raise NotImplementedError

    @staticmethod
    def _check_prune(factor: torch.Tensor, prune: bool) -> None:
        if prune and bool(factor.any()):
            raise ValueError("Pruning sink units only reproduces the model when their factor is 0 (mode 'drop').")

    def extra_repr(self) -> str:
        return f"layer={self.layer}, placement={self.placement}, pool={self.pool}"


class SplitSinkDownProjection(SinkDownProjection):
    """``split`` placement: ``base`` spans all units; the last ``pool`` of them are the sink pool.

    With ``scale`` (``SinksConfig.sink_lr_scale``) other than 1, the pool's down columns are
    stored divided by ``scale`` and the pool's entries of the mask are multiplied by it (and the
    up projections are ``SplitSinkUpProjection``s), so that Adam trains the pool ``scale`` times
    faster than the shared units; ``state_dict`` and ``unload`` give the effective weights.
    """

    placement = "split"

    def __init__(self, base: nn.Module, router: SinkRouter, layer: int, pool: int, scale: float = 1.0):
        super().__init__(base, router, layer, pool)
        self.scale = float(scale)
        self._factors = _PoolFactors(pool, self.scale)
        if self.scale != 1.0:
            dim = 0 if isinstance(base, Conv1D) else 1
            with torch.no_grad():
                base.weight.narrow(dim, base.weight.shape[dim] - pool, pool).div_(self.scale)

    @staticmethod
    def mask_width(width: int, pool: int) -> int:
        return width

    @classmethod
    def attach(cls, mlp: nn.Module, up: Sequence[str], down: str, router: SinkRouter, layer: int,
               pool: int) -> "SinkDownProjection":
        scale = router.config.sink_lr_scale
        if scale != 1.0:
            for name in up:
                setattr(mlp, name, SplitSinkUpProjection(getattr(mlp, name), pool, scale))
        wrapper = cls(getattr(mlp, down), router, layer, pool, scale)
        setattr(mlp, down, wrapper)
        return wrapper

    @property
    def shared(self) -> int:
        return in_out(self.base)[0] - self.pool

    def _rescaled(self, key: str, weight: torch.Tensor, factor: float) -> torch.Tensor:
        """``weight`` (the base's layout) with the pool's down weights (Linear: columns; Conv1D: rows) times ``factor``."""
        return _tail_times(key, weight, 0 if isinstance(self.base, Conv1D) else 1, in_out(self.base)[0], self.pool,
                           factor)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, T, units) hidden activations -> (B, T, hidden)."""
        mask = self._mask(h)
        return self.base(h * (mask if self.scale == 1.0 else mask * self._factors.like(mask)))

    def _merge(self, state: dict, prefix: str) -> None:
        key = prefix + "weight"
        if self.scale != 1.0 and key in state:
            state[key] = self._rescaled(key, state[key], self.scale)

    def _split(self, state: dict, prefix: str) -> None:
        key = prefix + "weight"
        if self.scale != 1.0 and key in state:
            state[key] = self._rescaled(key, state[key], 1.0 / self.scale)

    def unload(self, factor: torch.Tensor, prune: bool) -> nn.Module:
        self._check_prune(factor, prune)
        w = linear_weight(self.base).detach()
        bias = self.base.bias.detach() if has_bias(self.base) else None
        if prune:
            return new_projection(self.base, w[:, :self.shared], bias)
        scale = torch.cat([torch.ones(self.shared), factor * self.scale]).to(w)
        return new_projection(self.base, w * scale, bias)

    def unload_up(self, up: nn.Module, prune: bool) -> nn.Module:
        if isinstance(up, SplitSinkUpProjection):
            return up.unload(prune)
        if not prune:
            return up
        w = linear_weight(up).detach()[:self.shared]
        b = up.bias.detach()[:self.shared] if has_bias(up) else None
        return new_projection(up, w, b)

    def unloaded_width(self, prune: bool) -> int:
        return self.shared if prune else in_out(self.base)[0]

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", scale={self.scale:g}" if self.scale != 1.0 else "")


class AppendSinkDownProjection(SinkDownProjection):
    """``append`` placement: ``base`` spans the original units; ``sink_weight`` (out, pool) projects the
    appended pool (whose up rows live in the ``SinkUpProjection``s).

    The pool's down columns start so that the model's function is unchanged (``init``):

    - ``"mirror"``: random columns ``c`` for the first half of the pool and ``-c`` for the
      second; the halves' up rows are equal and each pair shares one routing coefficient, so
      their outputs cancel exactly (each half goes through its own matmul), while every unit
      has a non-zero down column and so a gradient from the first step;
    - ``"zero"``: zero columns (the up rows get no gradient until the columns have moved);
    - ``"random"``: random columns (not function-preserving).

    Stored divided by ``scale`` like the up rows.
    """

    placement = "append"

    def __init__(self, base: nn.Module, router: SinkRouter, layer: int, pool: int, scale: float = 1.0,
                 init: str = "zero", generator: torch.Generator | None = None):
        super().__init__(base, router, layer, pool)
        _, out_features = in_out(base)
        w = linear_weight(base)
        std = float(w.detach().float().std()) or 0.02
        if init == "zero":
            columns = torch.zeros(out_features, pool)
        elif init == "mirror":
            half = torch.randn(out_features, pool // 2, generator=generator) * std
            columns = torch.cat([half, -half], dim=1)
        elif init == "random":
            columns = torch.randn(out_features, pool, generator=generator) * std
        else:
            raise ValueError(f"Unknown sink_init {init!r}.")
        self.sink_weight = nn.Parameter((columns / scale).to(device=w.device, dtype=w.dtype))
        self.scale = float(scale)
        self.paired = init == "mirror"

    @staticmethod
    def mask_width(width: int, pool: int) -> int:
        return pool

    @classmethod
    def attach(cls, mlp: nn.Module, up: Sequence[str], down: str, router: SinkRouter, layer: int,
               pool: int) -> "SinkDownProjection":
        config = router.config
        # the appended units' initial values depend only on the routing seed and the block
        generator = torch.Generator().manual_seed((config.routing_seed * 1000003 + layer) % (1 << 63))
        paired = config.paired_units
        for name in up:
            setattr(mlp, name, SinkUpProjection(getattr(mlp, name), pool, generator, config.sink_lr_scale, paired,
                                                router))
        wrapper = cls(getattr(mlp, down), router, layer, pool, config.sink_lr_scale, config.sink_init, generator)
        setattr(mlp, down, wrapper)
        return wrapper

    def effective_weight(self) -> torch.Tensor:
        """The pool's down columns (out, pool) as weights (stored times ``scale``)."""
        return self.sink_weight if self.scale == 1.0 else self.sink_weight * self.scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, T, units + pool) hidden activations, or (B, T, units) when the up projections left the
        switched-off pool out -> (B, T, hidden)."""
        mask = self._mask(h)
        if mask is None and h.shape[-1] == in_out(self.base)[0]:
            return project(self.base, h)
        # one split, not two slices: its backward writes the input's gradient once, where each
        # slice's would zero-fill a full-width gradient and the two would then be added
        base_h, pool_h = torch.split(h, [h.shape[-1] - self.pool, self.pool], dim=-1)
        out = project(self.base, base_h)
        if mask is None:
            return out
        pool = pool_h * mask
        w = self.effective_weight()
        if not self.paired:
            return out + F.linear(pool, w)
        half = self.pool // 2
        return out + (F.linear(pool[..., :half], w[:, :half]) + F.linear(pool[..., half:], w[:, half:]))

    def _merge(self, state: dict, prefix: str) -> None:
        conv = isinstance(self.base, Conv1D)
        w = state.pop(prefix + "sink_weight")
        if self.scale != 1.0:
            w = w * self.scale
        state[prefix + "weight"] = torch.cat([state[prefix + "weight"], w.t() if conv else w], dim=0 if conv else 1)

    def _split(self, state: dict, prefix: str) -> None:
        key = prefix + "weight"
        if key not in state:
            return
        conv = isinstance(self.base, Conv1D)
        in_dim = 0 if conv else 1
        w = state[key]
        n = self.pool
        _check_width(key, w.shape[in_dim], linear_weight(self.base).shape[1] + n)
        state[key] = w.narrow(in_dim, 0, w.shape[in_dim] - n)
        sink = w.narrow(in_dim, w.shape[in_dim] - n, n)
        state[prefix + "sink_weight"] = (sink.t() if conv else sink) / self.scale

    def unload(self, factor: torch.Tensor, prune: bool) -> nn.Module:
        self._check_prune(factor, prune)
        if prune:
            return self.base
        w = linear_weight(self.base).detach()
        bias = self.base.bias.detach() if has_bias(self.base) else None
        sink = self.effective_weight().detach() * factor.to(w)
        return new_projection(self.base, torch.cat([w, sink], dim=1), bias)

    def unload_up(self, up: nn.Module, prune: bool) -> nn.Module:
        if not isinstance(up, SinkUpProjection):
            raise TypeError(f"An appended pool's up projection is a SinkUpProjection; got {type(up).__name__}.")
        return up.unload(prune)

    def unloaded_width(self, prune: bool) -> int:
        return in_out(self.base)[0] + (0 if prune else self.pool)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale={self.scale:g}, paired={self.paired}"


DOWN_PROJECTIONS: dict[str, type[SinkDownProjection]] = {
    cls.placement: cls for cls in (SplitSinkDownProjection, AppendSinkDownProjection)
}


def sink_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that make up the sinks: appended pools, or the MLPs that hold split pools."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (SinkUpProjection, SinkDownProjection)):
            for pname, p in module.named_parameters():
                out[f"{name}.{pname}"] = p
    return out


def sink_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The sink wrappers' own persistent buffers (the warm-up's progress), which a checkpoint must carry."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (SinkUpProjection, SinkDownProjection)):
            for bname, b in module.named_buffers(recurse=False):
                if bname not in module._non_persistent_buffers_set:
                    out[f"{name}.{bname}"] = b
    return out
