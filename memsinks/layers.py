"""Wrappers on an MLP's projections that carry the sinks.

``SinkDownProjection`` wraps the down projection (GPT-2 ``c_proj``, Llama ``down_proj``, ...)
and multiplies its input, the MLP hidden activations, by the current batch's mask before
projecting. Under ``append`` placement the pool is a separate set of units:
``SinkUpProjection`` widens each up projection (Llama: gate and up) by the pool's rows, and
the down wrapper adds the pool's contribution, whose weights start at zero, to the untouched
base projection, so the base model's output is reproduced exactly before training.

Both wrappers present the stock state-dict layout: ``state_dict()`` returns the widened
``weight``/``bias`` under the original module's key (so ``save_pretrained`` writes a checkpoint
that stock transformers can read, with the MLP width stated in ``config.json``), and
``load_state_dict`` accepts that layout back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from memsinks.routing import SinkRouter


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The module's weight as (out_features, in_features), a view (Conv1D stores (in, out))."""
    if isinstance(module, Conv1D):
        return module.weight.t()
    return module.weight


def project(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply ``module`` to ``x`` without requiring ``x`` to be contiguous.

    Gives bit-identical results to ``module(x)`` for ``nn.Linear`` and ``Conv1D``.
    """
    if isinstance(module, Conv1D):
        out = torch.addmm(module.bias, x.reshape(-1, x.shape[-1]), module.weight)
        return out.view(x.shape[:-1] + (module.nf,))
    if type(module) is nn.Linear:
        return F.linear(x, module.weight, module.bias)
    return module(x.contiguous())


def _in_out(module: nn.Module) -> tuple[int, int]:
    w = linear_weight(module)
    return w.shape[1], w.shape[0]


def _has_bias(module: nn.Module) -> bool:
    return getattr(module, "bias", None) is not None


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
        """Fold the pool's tensors into the widened stock tensors (subclasses with a pool)."""

    def _split(self, state: dict, prefix: str) -> None:
        """Split widened stock tensors into base and pool tensors (subclasses with a pool)."""


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


class SinkUpProjection(_StockLayout):
    """An up (or gate) projection widened by ``n_sink`` appended units.

    ``forward(x)`` returns (..., out + n_sink): the base projection's units, then the pool's.
    The pool's rows start as random as the base rows (same standard deviation).
    """

    def __init__(self, base: nn.Module, n_sink: int, generator: torch.Generator):
        super().__init__()
        self.base = base
        in_features, _ = _in_out(base)
        w = linear_weight(base)
        std = float(w.detach().float().std()) or 0.02
        init = torch.randn(n_sink, in_features, generator=generator) * std
        self.sink_weight = nn.Parameter(init.to(device=w.device, dtype=w.dtype))
        self.sink_bias = (
            nn.Parameter(torch.zeros(n_sink, device=w.device, dtype=w.dtype)) if _has_bias(base) else None
        )
        self.n_sink = n_sink

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) -> (..., out + n_sink)."""
        base_out = project(self.base, x)
        sink_out = F.linear(x, self.sink_weight, self.sink_bias)
        return torch.cat([base_out, sink_out], dim=-1)

    def _merge(self, state: dict, prefix: str) -> None:
        conv = isinstance(self.base, Conv1D)
        w = state.pop(prefix + "sink_weight")
        state[prefix + "weight"] = torch.cat([state[prefix + "weight"], w.t() if conv else w], dim=1 if conv else 0)
        if prefix + "sink_bias" in state:
            state[prefix + "bias"] = torch.cat([state[prefix + "bias"], state.pop(prefix + "sink_bias")])

    def _split(self, state: dict, prefix: str) -> None:
        conv = isinstance(self.base, Conv1D)
        key = prefix + "weight"
        if key not in state:
            return
        w = state[key]
        n = self.n_sink
        out_dim = 1 if conv else 0
        _check_width(key, w.shape[out_dim], linear_weight(self.base).shape[0] + n)
        base_w, sink_w = w.narrow(out_dim, 0, w.shape[out_dim] - n), w.narrow(out_dim, w.shape[out_dim] - n, n)
        state[key] = base_w
        state[prefix + "sink_weight"] = sink_w.t() if conv else sink_w
        if self.sink_bias is not None and prefix + "bias" in state:
            b = state[prefix + "bias"]
            state[prefix + "bias"], state[prefix + "sink_bias"] = b[:-n], b[-n:]


def _check_width(key: str, got: int, expected: int) -> None:
    if got != expected:
        raise RuntimeError(
            f"{key}: the checkpoint's MLP has {got} units where this model with sinks has {expected}. "
            "Load a checkpoint saved with the same SinksConfig (memsinks.from_pretrained), or attach "
            "sinks after loading the base weights."
        )


class SinkDownProjection(_StockLayout):
    """The down projection of a block with sinks: masks its input units, then projects.

    ``split``: ``base`` spans all units; the last ``pool`` of them are the sink pool.
    ``append``: ``base`` spans the original units; ``sink_weight`` (out, pool), zero at
    creation, projects the appended pool.
    """

    def __init__(self, base: nn.Module, router: SinkRouter, layer: int, pool: int, placement: str):
        super().__init__()
        self.base = base
        self.layer = layer
        self.pool = pool
        self.placement = placement
        self.__dict__["router"] = router  # shared, not a submodule: one router per model
        if placement == "append":
            _, out_features = _in_out(base)
            w = linear_weight(base)
            self.sink_weight = nn.Parameter(torch.zeros(out_features, pool, device=w.device, dtype=w.dtype))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, T, units) hidden activations -> (B, T, hidden)."""
        mask = self.router.mask_for(self.layer)
        if mask is not None and mask.dtype != h.dtype:
            mask = mask.to(h.dtype)
        if self.placement == "split":
            return self.base(h * mask)
        n_base = h.shape[-1] - self.pool
        out = project(self.base, h[..., :n_base])
        if mask is None:
            return out
        return out + F.linear(h[..., n_base:] * mask, self.sink_weight)

    def _merge(self, state: dict, prefix: str) -> None:
        if self.placement != "append":
            return
        conv = isinstance(self.base, Conv1D)
        w = state.pop(prefix + "sink_weight")
        state[prefix + "weight"] = torch.cat([state[prefix + "weight"], w.t() if conv else w], dim=0 if conv else 1)

    def _split(self, state: dict, prefix: str) -> None:
        key = prefix + "weight"
        if self.placement != "append" or key not in state:
            return
        conv = isinstance(self.base, Conv1D)
        in_dim = 0 if conv else 1
        w = state[key]
        n = self.pool
        _check_width(key, w.shape[in_dim], linear_weight(self.base).shape[1] + n)
        state[key] = w.narrow(in_dim, 0, w.shape[in_dim] - n)
        sink = w.narrow(in_dim, w.shape[in_dim] - n, n)
        state[prefix + "sink_weight"] = sink.t() if conv else sink

    def extra_repr(self) -> str:
        return f"layer={self.layer}, placement={self.placement}, pool={self.pool}"
