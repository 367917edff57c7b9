"""Sequence ID -> sink mask: the routing hash, vectorised on the model's device and cached per ID.

A sink unit ``u`` of block ``l`` is on for sequence ID ``i`` when a 64-bit hash of
``(routing_seed, i, l, u)`` falls below ``p_mem * 2**31`` (in its top 31 bits). The hash is a
chain of splitmix64 finalisers, so masks of neighbouring IDs are statistically independent (a
hash linear in the ID, as in the paper's reference code, would correlate them), and it uses
only integer arithmetic, so every device and process computes the same bits.

Two settings of ``SinksConfig`` change what a bit means. Mirrored appended units
(``sink_init="mirror"``) come in pairs, unit ``u`` and ``u + pool/2``, that share the bit of
unit ``u`` (``routed_unit``), so a pair is always on or off together. Centered masks
(``centered_masks``) turn a bit into a zero-mean coefficient: ``1 - p_mem`` when on, ``-p_mem``
when off; the constant modes are then all zero.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from memsinks.config import SinksConfig

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB
_THRESHOLD_BITS = 31


def _signed(value: int) -> int:
    """The int64 with the same 64 bits as the unsigned ``value``."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def mix64(z: int) -> int:
    """splitmix64's finaliser on a Python int (the reference the tensor path must equal)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _C1) & _MASK64
    z = ((z ^ (z >> 27)) * _C2) & _MASK64
    return z ^ (z >> 31)


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic on int64)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def mix64_tensor(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser, elementwise on an int64 tensor (multiplication wraps mod 2**64)."""
    z = (z ^ _shr(z, 30)) * _signed(_C1)
    z = (z ^ _shr(z, 27)) * _signed(_C2)
    return z ^ _shr(z, 31)


def unit_key(layer: int, unit: int) -> int:
    """The 64-bit key of sink unit ``unit`` of block ``layer``."""
    return (layer << 32) | unit


def threshold(p_mem: float) -> int:
    """Units whose 31-bit hash is below this value are on; ``p_mem=1`` switches on every unit."""
    return int(round(p_mem * (1 << _THRESHOLD_BITS)))


def reference_unit_is_on(seed: int, sequence_id: int, layer: int, unit: int, p_mem: float) -> bool:
    """Pure-Python specification of the routing decision of one (ID, layer, unit)."""
    if sequence_id == 0:
        return False
    per_id = mix64(mix64((seed + _GOLDEN) & _MASK64) ^ sequence_id)
    return (mix64(per_id ^ unit_key(layer, unit)) >> (64 - _THRESHOLD_BITS)) < threshold(p_mem)


@dataclass(frozen=True)
class LayerSpec:
    """Where one block's sinks sit.

    ``width`` is the number of units the block's mask covers: the whole MLP (shared then pool)
    for ``split``, the appended pool alone for ``append``. The pool is the last ``pool`` units.
    """

    layer: int
    width: int
    pool: int

    @property
    def shared(self) -> int:
        return self.width - self.pool


class SinkRouter:
    """Turns a batch's sequence IDs into the masks of every sink layer, once per forward pass.

    One router serves all sink layers of a model. ``begin`` computes the masks of a batch
    (one row per unique ID, all layers at once, reusing cached rows) and keeps them until the
    next ``begin``, so a gradient-checkpointing recompute during backward sees the same masks.
    Sink layers read theirs with ``mask_for``.
    """

    def __init__(self, config: SinksConfig, specs: Sequence[LayerSpec]):
        self.config = config
        self.specs = list(specs)
        self.placement = config.placement
        self._position = {spec.layer: i for i, spec in enumerate(self.specs)}
        pool_offsets, width_offsets = [0], [0]
        for spec in self.specs:
            pool_offsets.append(pool_offsets[-1] + spec.pool)
            width_offsets.append(width_offsets[-1] + spec.width)
        self._pool_offsets = pool_offsets
        self._width_offsets = width_offsets
        self.total_pool = pool_offsets[-1]
        self.total_width = width_offsets[-1]
        self._seed_key = mix64((config.routing_seed + _GOLDEN) & _MASK64)
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._device_tensors: dict = {}
        self.masks_computed = 0
        self.cache_hits = 0
        self._current: list | None = None
        self.mode_stack: list[tuple[str, tuple[int, ...]]] = []

    def __deepcopy__(self, memo):
        clone = SinkRouter(self.config, self.specs)
        clone.mode_stack = list(self.mode_stack)
        memo[id(self)] = clone
        return clone

    def __getstate__(self):
        return {"config": self.config, "specs": self.specs, "mode_stack": self.mode_stack}

    def __setstate__(self, state):
        self.__init__(state["config"], state["specs"])
        self.mode_stack = state["mode_stack"]

    # ----------------------------------------------------------------- hashing
    def routed_unit(self, spec: LayerSpec, unit: int) -> int:
        """The unit whose routing bit ``unit`` uses: itself, or for mirrored pairs the first of its pair."""
        if self.config.paired_units:
            return unit % (spec.pool // 2)
        return unit

    def _unit_keys(self, device: torch.device) -> torch.Tensor:
        key = ("unit_keys", device)
        if key not in self._device_tensors:
            keys = [unit_key(s.layer, self.routed_unit(s, u)) for s in self.specs for u in range(s.pool)]
            self._device_tensors[key] = torch.tensor(keys, dtype=torch.int64, device=device)
        return self._device_tensors[key]

    def compute_pool_bits(self, ids: torch.Tensor) -> torch.Tensor:
        """Pool bits of each ID, all layers concatenated, without the cache.

        Args:
            ids: int64 tensor (U,) of sequence IDs.
        Returns:
            bool tensor (U, total_pool); row of ID 0 is all False.
        """
        per_id = mix64_tensor(ids.to(torch.int64) ^ _signed(self._seed_key))
        bits = mix64_tensor(per_id[:, None] ^ self._unit_keys(ids.device)[None, :])
        on = _shr(bits, 64 - _THRESHOLD_BITS) < threshold(self.config.p_mem)
        return on & (ids != 0)[:, None]

    def pool_bits(self, ids: Iterable[int], device: torch.device) -> torch.Tensor:
        """Pool bits of each ID through the LRU cache: bool (U, total_pool) on ``device``."""
        ids = list(ids)
        rows: list[torch.Tensor | None] = []
        missing: list[int] = []
        for i in ids:
            row = self._cache.get(i)
            if row is not None and row.device == device:
                self._cache.move_to_end(i)
                self.cache_hits += 1
            else:
                row = None
                missing.append(i)
            rows.append(row)
        if missing:
            uniq = list(dict.fromkeys(missing))
            fresh = self.compute_pool_bits(torch.tensor(uniq, dtype=torch.int64, device=device))
            self.masks_computed += len(uniq)
            computed = dict(zip(uniq, fresh.unbind(0)))
            for i, row in computed.items():
                if self.config.mask_cache_size:
                    self._cache[i] = row
                    self._cache.move_to_end(i)
            while len(self._cache) > self.config.mask_cache_size:
                self._cache.popitem(last=False)
            rows = [computed[i] if r is None else r for i, r in zip(ids, rows)]
        if not rows:
            return torch.zeros(0, self.total_pool, dtype=torch.bool, device=device)
        return torch.stack(rows)

    def _pool_to_width(self, pool: torch.Tensor) -> torch.Tensor:
        """Place pool columns into the mask width of each layer (ones at shared units for split)."""
        if self.placement == "append":
            return pool
        full = torch.ones(pool.shape[:-1] + (self.total_width,), dtype=pool.dtype, device=pool.device)
        index = self._pool_columns(pool.device)
        full[..., index] = pool
        return full

    def _pool_columns(self, device: torch.device) -> torch.Tensor:
        key = ("pool_columns", device)
        if key not in self._device_tensors:
            cols = [self._width_offsets[i] + s.shared + u for i, s in enumerate(self.specs) for u in range(s.pool)]
            self._device_tensors[key] = torch.tensor(cols, dtype=torch.long, device=device)
        return self._device_tensors[key]

    # -------------------------------------------------------------- per batch
    @property
    def mode(self) -> str | None:
        return self.mode_stack[-1][0] if self.mode_stack else None

    def resolve_mode(self, training: bool) -> tuple[str, tuple[int, ...]]:
        """The mode in force: a ``sinks_mode`` context, else own routing when training, else the config's."""
        if self.mode_stack:
            return self.mode_stack[-1]
        if training:
            return "own", ()
        return self.config.eval_mode, tuple(self.config.exclude_ids)

    def begin(
        self,
        sequence_ids: torch.Tensor | None,
        mode: str,
        exclude_ids: Sequence[int],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        """Compute the masks of one forward pass.

        Args:
            sequence_ids: int64 (B,) or (B, T) on any device, or None in modes that need no IDs.
            mode: "own" | "drop" | "mean" | "exclude".
            exclude_ids: IDs whose units "exclude" switches off.
        """
        if mode == "own" or (mode == "exclude" and sequence_ids is not None):
            ids = sequence_ids.to(device)
            uniq, inverse = torch.unique(ids, return_inverse=True)
            bits = self.pool_bits(uniq.tolist(), device)
            pool = bits.to(dtype)
            if self.config.centered_masks:
                pool = pool - self.config.p_mem
            if mode == "exclude":
                pool = pool.masked_fill(self._excluded_units(exclude_ids, device), 0)
            rows = self._pool_to_width(pool)
            self._current = ["rows", rows, inverse]
            if inverse.dim() == 1:
                self._current = ["batch", rows[inverse]]
            return
        pool = self.constant_pool(mode, exclude_ids, dtype, device)
        self._current = ["const", self._pool_to_width(pool), not bool(pool.any())]

    def constant_pool(
        self,
        mode: str,
        exclude_ids: Sequence[int],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """The factor of each pool unit (all layers concatenated, (total_pool,)) in a mode that needs no IDs.

        ``"drop"``: 0; ``"mean"``: ``p_mem``; ``"exclude"``: 0 for the units of ``exclude_ids``, ``p_mem`` elsewhere.
        With centered masks a unit's expected coefficient is 0, so every constant mode is ``"drop"``.
        """
        if mode not in ("drop", "mean", "exclude"):
            raise ValueError(f"Unknown sinks mode {mode!r}; use one of 'drop', 'mean', 'own', 'exclude'.")
        if mode == "drop" or self.config.centered_masks:
            return torch.zeros(self.total_pool, dtype=dtype, device=device)
        if mode == "mean":
            return torch.full((self.total_pool,), self.config.p_mem, dtype=dtype, device=device)
        if mode == "exclude":
            keep = ~self._excluded_units(exclude_ids, torch.device(device))
            return keep.to(dtype) * self.config.p_mem
        raise ValueError(f"Unknown sinks mode {mode!r}; use one of 'drop', 'mean', 'own', 'exclude'.")

    def _excluded_units(self, exclude_ids: Sequence[int], device: torch.device) -> torch.Tensor:
        if not exclude_ids:
            return torch.zeros(self.total_pool, dtype=torch.bool, device=device)
        return self.pool_bits(exclude_ids, device).any(dim=0)

    def appended_pools_off(self) -> bool:
        """Whether the current forward switches every appended pool off (drop mode), so that the
        pools' units need not be computed at all; False before any forward has begun."""
        current = self._current
        return self.placement == "append" and current is not None and current[0] == "const" and current[2]

    def mask_for(self, layer: int) -> torch.Tensor | None:
        """The mask of block ``layer`` for the current batch.

        Returns a tensor broadcastable to the layer's masked activations: (W,) in constant
        modes, (B, 1, W) for per-sequence IDs, (B, T, W) for per-token IDs, where W is the
        layer's mask width; or None when an appended pool is entirely off (drop mode), so the
        layer can skip its sink units altogether.
        """
        if self._current is None:
            raise RuntimeError(
                "Sink masks were read before any forward pass set them; call the model itself "
                "(model(input_ids, sequence_ids=...)), not one of its blocks."
            )
        i = self._position[layer]
        lo, hi = self._width_offsets[i], self._width_offsets[i + 1]
        kind = self._current[0]
        if kind == "const":
            return None if self.appended_pools_off() else self._current[1][lo:hi]
        if kind == "batch":
            return self._current[1][:, None, lo:hi]
        rows, inverse = self._current[1], self._current[2]
        return rows[:, lo:hi][inverse]

    def clear_cache(self) -> None:
        self._cache.clear()
        self._device_tensors.clear()
