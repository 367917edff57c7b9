"""Where does memorization live? Knock out one block's attention, or one block's sinks, and measure.

Attention short-circuiting (Menta, Agrawal, Agarwal, NAACL 2025, arXiv 2501.05078) replaces a
block's attention probabilities by the identity: every position attends only to itself, so the
block's attention output at position ``i`` is the output projection of position ``i``'s own
value vector. Value and output projections, norms, MLP and residuals are kept. The paper finds
that short-circuiting some blocks removes verbatim recall while general ability stays.

The hook uses transformers' own dispatch: attention modules call
``ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, ...)``. memsinks
registers one more attention function (``IDENTITY_ATTENTION``) and, inside
``short_circuit_attention``, gives only the chosen blocks' attention modules a view of the
config that names it. No model code is copied, the masks the model builds are untouched, and
outside the ``with`` block the attention modules hold their original config object again, so
the model is bit-identical to the stock one.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

import memsinks
from memsinks.architectures import find_blocks, layout_for
from memsinks.model import unwrap_model

IDENTITY_ATTENTION = "memsinks_identity"
_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
_CALLS_ATTR = "_memsinks_identity_calls"


def identity_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """An attention function in transformers' interface whose probabilities are the identity.

    Args:
        query: (B, H, Tq, D); key, value: (B, H_kv, Tk, D) with Tk >= Tq (a cache holds the
            earlier positions; the queries are the last Tq of them).
    Returns:
        ((B, Tq, H, D) attention output, None): each query position's own value vector.
    """
    t_q = query.shape[2]
    own = value[:, :, value.shape[2] - t_q:]
    groups = query.shape[1] // value.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        own = own.repeat_interleave(groups, dim=1)
    module.__dict__[_CALLS_ATTR] = module.__dict__.get(_CALLS_ATTR, 0) + 1
    return own.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if ALL_ATTENTION_FUNCTIONS.get(IDENTITY_ATTENTION) is not identity_attention:
        ALL_ATTENTION_FUNCTIONS.register(IDENTITY_ATTENTION, identity_attention)


class _ConfigView:
    """The model's config, except that ``_attn_implementation`` names the identity attention."""

    def __init__(self, base: Any):
        self.__dict__["_base"] = base
        self.__dict__["_attn_implementation"] = IDENTITY_ATTENTION

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_base"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("The config of a short-circuited attention module is read-only inside the hook.")


def blocks_of(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a causal LM of a family memsinks knows."""
    inner = unwrap_model(model)
    return find_blocks(inner, layout_for(inner.config.model_type))


def attention_module(block: nn.Module) -> nn.Module:
    """The self-attention module of a transformer block (``self_attn``, ``attn`` or ``attention``)."""
    for name in _ATTENTION_NAMES:
        module = getattr(block, name, None)
        if isinstance(module, nn.Module) and "config" in module.__dict__:
            return module
    raise ValueError(
        f"{type(block).__name__} has no self-attention module named one of {_ATTENTION_NAMES} with a config; "
        "attention short-circuiting supports blocks whose attention dispatches through transformers' "
        "AttentionInterface (GPT-2, GPT-NeoX, Llama, Mistral, Qwen2, ...)."
    )


def _check_dispatch(module: nn.Module, _inputs: Any, _output: Any) -> None:
    calls = module.__dict__.pop(_CALLS_ATTR, 0)
    if calls == 0:
        raise RuntimeError(
            f"{type(module).__name__} ran without calling transformers' attention dispatch "
            "(ALL_ATTENTION_FUNCTIONS), so it cannot be short-circuited by memsinks; this family's attention "
            "computes its probabilities itself."
        )


@contextlib.contextmanager
def short_circuit_attention(model: nn.Module, blocks: int | Sequence[int]) -> Iterator[nn.Module]:
    """Inside the block, the attention of ``blocks`` (indices, negative from the end) is the identity.

    Raises RuntimeError at the first forward if a chosen attention module does not dispatch
    through transformers' attention interface (so a silent no-op is impossible).
    """
    _register()
    all_blocks = blocks_of(model)
    chosen = [blocks] if isinstance(blocks, int) and not isinstance(blocks, bool) else list(blocks)
    n = len(all_blocks)
    for b in chosen:
        if isinstance(b, bool) or not isinstance(b, int):
            raise ValueError(f"Blocks are given by int index; got {b!r} ({type(b).__name__}).")
        if not -n <= b < n:
            raise ValueError(f"Block {b} does not exist; the model has {n} blocks (0..{n - 1}).")
    modules = [attention_module(all_blocks[b]) for b in dict.fromkeys(b % n for b in chosen)]
    originals = [m.__dict__["config"] for m in modules]
    handles = []
    try:
        for m, config in zip(modules, originals):
            m.__dict__["config"] = _ConfigView(config)
            m.__dict__.pop(_CALLS_ATTR, None)
            handles.append(m.register_forward_hook(_check_dispatch))
        yield model
    finally:
        for h in handles:
            h.remove()
        for m, config in zip(modules, originals):
            m.__dict__["config"] = config
            m.__dict__.pop(_CALLS_ATTR, None)


# --------------------------------------------------------------------------------------------- the measurements
@dataclass
class Measurement:
    """Memorization on the member set and loss on held-out text, under one intervention."""

    exact_match: float
    token_accuracy: float
    heldout_loss: float

    @classmethod
    def of(cls, extraction_result: Any, heldout_loss: float) -> "Measurement":
        return cls(float(extraction_result.exact_match), float(extraction_result.token_accuracy), float(heldout_loss))


@dataclass
class AttributionResult:
    """Per block: the baseline, the attention short-circuited, and the block's sinks dropped (None: no sinks)."""

    baseline: Measurement
    attention: list[Measurement]
    sinks: list[Measurement | None]
    mode: str = "own"
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "settings": self.settings,
            "baseline": asdict(self.baseline),
            "blocks": [
                {"block": i, "attention_short_circuit": asdict(a), "sinks_dropped": None if s is None else asdict(s)}
                for i, (a, s) in enumerate(zip(self.attention, self.sinks))
            ],
        }

    def format_table(self) -> str:
        def cells(m: Measurement | None) -> str:
            if m is None:
                return f"{'(no sinks)':^24}"
            return f"{m.exact_match:>6.3f} {m.token_accuracy:>7.3f} {m.heldout_loss:>9.3f}"

        lines = [
            f"Per-block attribution (sinks mode {self.mode!r}); exact = extraction exact-match, tok = token accuracy,",
            "held-out = mean held-out loss (nats/token).",
            "",
            f"{'':<10}| {'attention short-circuited':^24} | {'block sinks dropped':^24}",
            f"{'block':<10}| {'exact':>6} {'tok':>7} {'held-out':>9} | {'exact':>6} {'tok':>7} {'held-out':>9}",
            "-" * 10 + "+" + "-" * 26 + "+" + "-" * 25,
            f"{'none':<10}| {cells(self.baseline)} | {cells(self.baseline)}",
        ]
        for i, (a, s) in enumerate(zip(self.attention, self.sinks)):
            lines.append(f"{i:<10}| {cells(a)} | {cells(s)}")
        return "\n".join(lines)

    def plot(self, path: str) -> None:
        """Bar charts of exact match, token accuracy and held-out loss per block, written to ``path`` (PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        blocks = np.arange(len(self.attention))
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        metrics = [("exact_match", "extraction exact match"), ("token_accuracy", "extraction token accuracy"),
                   ("heldout_loss", "held-out loss (nats/token)")]
        for ax, (key, title) in zip(axes, metrics):
            att = [getattr(m, key) for m in self.attention]
            snk = [math.nan if m is None else getattr(m, key) for m in self.sinks]
            ax.bar(blocks - 0.2, att, width=0.4, label="attention short-circuited")
            ax.bar(blocks + 0.2, snk, width=0.4, label="block's sinks dropped")
            ax.axhline(getattr(self.baseline, key), color="k", linestyle="--", linewidth=1, label="no intervention")
            ax.set_title(title)
            ax.set_xlabel("block")
            ax.set_xticks(blocks)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def heldout_loss(model: nn.Module, sequences: Sequence[Sequence[int]], sequence_ids: Sequence[int] | None,
                 batch_size: int = 32, pad_token_id: int = 0) -> float:
    """Token-weighted mean NLL (nats/token) of held-out sequences."""
    from memsinks.probes import token_nlls

    nlls = token_nlls(model, sequences, sequence_ids, batch_size=batch_size, pad_token_id=pad_token_id)
    return float(np.concatenate(nlls).mean())


def measure(model: nn.Module, members: Sequence[Sequence[int]], member_ids: Sequence[int] | None,
            heldout: Sequence[Sequence[int]], heldout_ids: Sequence[int] | None, prefix_len: int, suffix_len: int,
            batch_size: int = 32, pad_token_id: int = 0) -> Measurement:
    """Extraction on ``members`` and held-out loss, in whatever sinks mode and hooks are active."""
    from memsinks.probes import extraction

    ext = extraction(model, members, prefix_len=prefix_len, suffix_len=suffix_len, sequence_ids=member_ids,
                     batch_size=batch_size, pad_token_id=pad_token_id)
    return Measurement.of(ext, heldout_loss(model, heldout, heldout_ids, batch_size, pad_token_id))


def attribute_blocks(
    model: nn.Module,
    members: Sequence[Sequence[int]],
    heldout: Sequence[Sequence[int]],
    member_ids: Sequence[int] | None = None,
    heldout_ids: Sequence[int] | None = None,
    prefix_len: int = 32,
    suffix_len: int = 32,
    mode: str = "own",
    batch_size: int = 32,
    pad_token_id: int = 0,
    progress: bool = True,
) -> AttributionResult:
    """Measure memorization and held-out loss with each block's attention short-circuited, and
    (for a model with sinks) with each block's sinks dropped, one block at a time.

    Args:
        members: token sequences to extract (each at least ``prefix_len + suffix_len`` tokens).
        member_ids, heldout_ids: their sequence IDs (needed in ``own`` mode).
        mode: sinks mode during all measurements (``own``: memorization fully present).
    """
    from memsinks.ablation.pool_units import scaled_pool_units, units_of_block

    has_sinks = memsinks.has_sinks(model)
    if has_sinks and mode == "own" and (member_ids is None or heldout_ids is None):
        raise ValueError("Attribution in sinks mode 'own' needs member_ids and heldout_ids.")
    ctx = memsinks.sinks_mode(model, mode if has_sinks else None)
    kwargs = dict(prefix_len=prefix_len, suffix_len=suffix_len, batch_size=batch_size, pad_token_id=pad_token_id)
    n = len(blocks_of(model))
    attention: list[Measurement] = []
    sinks: list[Measurement | None] = []
    with ctx, tqdm(total=1 + 2 * n, desc="attribute", unit="run", disable=not progress) as bar:
        baseline = measure(model, members, member_ids, heldout, heldout_ids, **kwargs)
        bar.update()
        for b in range(n):
            with short_circuit_attention(model, b):
                attention.append(measure(model, members, member_ids, heldout, heldout_ids, **kwargs))
            bar.update()
            units = units_of_block(model, b) if has_sinks else None
            if units is None or not bool(units.any()):
                sinks.append(None)
            else:
                with scaled_pool_units(model, (~units).float()):
                    sinks.append(measure(model, members, member_ids, heldout, heldout_ids, **kwargs))
            bar.update()
    return AttributionResult(baseline=baseline, attention=attention, sinks=sinks, mode=mode,
                             settings={"prefix_len": prefix_len, "suffix_len": suffix_len, "members": len(members),
                                       "heldout_sequences": len(heldout)})
