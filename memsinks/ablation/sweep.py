"""Drop a growing share of the sink pool and watch memorization and held-out loss.

The pool units are put in one random order (a fixed seed, all blocks together); dropping a
fraction ``f`` switches off the first ``f`` of that order, so each step drops a superset of
the previous one. Dropping 0% is the model with its sinks (in the mode measured, ``own`` by
default), dropping 100% is exactly its ``drop`` mode. Units are switched off by scaling their
down-projection weights inside ``memsinks.ablation.pool_units.scaled_pool_units``, which
restores them bit for bit afterwards.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

import memsinks
from memsinks.ablation.attribution import Measurement, measure
from memsinks.ablation.pool_units import scaled_pool_units
from memsinks.model import get_router

DEFAULT_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


def drop_order(model: nn.Module, seed: int = 0) -> torch.Tensor:
    """A fixed random permutation of the pool units (LongTensor (total_pool,))."""
    total = get_router(model).total_pool
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))


def drop_scale(model: nn.Module, fraction: float, seed: int = 0) -> torch.Tensor:
    """Float (total_pool,): 0 for the first ``round(fraction * pool)`` units of ``drop_order``, 1 elsewhere."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"A dropped fraction of the sink pool is in [0, 1]; got {fraction}.")
    order = drop_order(model, seed)
    scale = torch.ones(order.numel())
    scale[order[:int(round(fraction * order.numel()))]] = 0.0
    return scale


@dataclass
class SweepResult:
    """One ``Measurement`` per dropped fraction of the sink pool."""

    fractions: list[float]
    measurements: list[Measurement]
    mode: str = "own"
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "settings": self.settings,
                "points": [{"dropped_fraction": f, **asdict(m)} for f, m in zip(self.fractions, self.measurements)]}

    def format_table(self) -> str:
        lines = [f"Sink pool sweep (sinks mode {self.mode!r})", "",
                 f"{'pool dropped':>12} | {'exact match':>11} | {'token acc':>9} | {'held-out loss':>13}",
                 "-" * 13 + "+" + "-" * 13 + "+" + "-" * 11 + "+" + "-" * 14]
        for f, m in zip(self.fractions, self.measurements):
            lines.append(f"{100 * f:>11.0f}% | {m.exact_match:>11.3f} | {m.token_accuracy:>9.3f} | "
                         f"{m.heldout_loss:>13.3f}")
        return "\n".join(lines)

    def plot(self, path: str) -> None:
        """Memorization (exact match, token accuracy) against held-out loss, one point per fraction (PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        loss = [m.heldout_loss for m in self.measurements]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.plot(loss, [m.exact_match for m in self.measurements], "o-", label="exact match")
        ax.plot(loss, [m.token_accuracy for m in self.measurements], "s--", label="token accuracy")
        for f, x, y in zip(self.fractions, loss, [m.exact_match for m in self.measurements]):
            ax.annotate(f"{100 * f:.0f}%", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("held-out loss (nats/token)")
        ax.set_ylabel("extraction on the member set")
        ax.set_title("dropping a growing share of the sink pool")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def sweep_sink_pool(
    model: nn.Module,
    members: Sequence[Sequence[int]],
    heldout: Sequence[Sequence[int]],
    member_ids: Sequence[int] | None = None,
    heldout_ids: Sequence[int] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    prefix_len: int = 32,
    suffix_len: int = 32,
    mode: str = "own",
    seed: int = 0,
    batch_size: int = 32,
    pad_token_id: int = 0,
    progress: bool = True,
) -> SweepResult:
    """Measure extraction on ``members`` and held-out loss with each ``fraction`` of the pool dropped."""
    if mode == "own" and (member_ids is None or heldout_ids is None):
        raise ValueError("A sweep in sinks mode 'own' needs member_ids and heldout_ids.")
    out = []
    with memsinks.sinks_mode(model, mode):
        for f in tqdm(list(fractions), desc="sweep", unit="fraction", disable=not progress):
            ctx = scaled_pool_units(model, drop_scale(model, f, seed)) if f > 0 else contextlib.nullcontext()
            with ctx:
                out.append(measure(model, members, member_ids, heldout, heldout_ids, prefix_len, suffix_len,
                                   batch_size, pad_token_id))
    return SweepResult(fractions=[float(f) for f in fractions], measurements=out, mode=mode,
                       settings={"prefix_len": prefix_len, "suffix_len": suffix_len, "seed": seed})
