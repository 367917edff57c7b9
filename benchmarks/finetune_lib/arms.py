"""The benchmark's arms: how each fine-tune differs from standard full fine-tuning.

Every arm sees the same records, steps and learning rate; an arm changes only the model
(sinks with a ``SinksConfig``, LoRA adapters), the data (``private_mask`` marked by
``memsinks.mark_private_spans``) or the optimizer (DP-SGD through ``memsinks.make_private``).
The exception is exact deduplication, the practitioner's first answer to repeated records: it
trains on each distinct row once per epoch, so the same epochs take fewer steps (``dedup``), or
more epochs fill standard's steps (``dedup_same_steps``).
Arms with sinks are measured with the sinks dropped (the shipped model), in each record's own
sinks, and in another record's sinks (the placebo).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Arm:
    """One way to fine-tune. ``sinks``: ``SinksConfig`` keyword arguments (None: no sinks). ``freeze_mlp``: the
    pretrained MLP weights do not train (attention, norms and embeddings learn the task; appended sinks still train).
    ``mask_private_labels``: the tokens ``private_mask`` marks get label -100 (no loss) and the mask goes no
    further: what a practitioner with the same marks does without sinks. ``goldfish``: the goldfish loss (a hash of
    each target's preceding tokens leaves a fixed 1/k of them out of the loss), the label-free alternative.
    ``decay_to_base``: after every optimizer step the shared (non-sink) trainable parameters move back toward their
    pretrained values by ``lr * decay_to_base`` of the distance (decoupled, as AdamW decays toward zero), so what no
    gradient keeps up, such as a secret the sinks now fit, fades from the shipped model. ``dedup``: identical
    training rows are kept once (the first), and ``dedup_same_steps`` trains them for as many optimizer steps as
    standard fine-tuning takes on every row (more epochs) instead of for the same epochs (fewer steps).
    ``per_record_ids``: each training row's sequence ID comes from its own text (what ``assign_sequence_ids`` gives
    by default) instead of from the person it is about; the same with copies, not with people as members."""

    name: str
    description: str
    sinks: dict | None = None
    lora: bool = False
    private_mask: bool = False
    dp: bool = False
    freeze_mlp: bool = False
    mask_private_labels: bool = False
    goldfish: bool = False
    decay_to_base: float = 0.0
    dedup: bool = False
    dedup_same_steps: bool = False
    per_record_ids: bool = False
    tags: tuple[str, ...] = field(default=())

    @property
    def has_sinks(self) -> bool:
        return self.sinks is not None

    def __post_init__(self):
        if self.mask_private_labels and not self.private_mask:
            raise ValueError(f"Arm {self.name!r}: mask_private_labels needs private_mask=True (the marks it masks).")
        if self.dedup_same_steps and not self.dedup:
            raise ValueError(f"Arm {self.name!r}: dedup_same_steps needs dedup=True (the rows it trains longer on).")
        if self.per_record_ids and self.sinks is None:
            raise ValueError(f"Arm {self.name!r}: per_record_ids needs sinks (IDs route nothing without them).")


def _sinks(**overrides) -> dict:
    """Append sinks as the lever arms were measured: every block, no routing (memorized_threshold 0), unless
    overridden. Pinned, since the defaults of SinksConfig changed after these arms were run."""
    return {"placement": "append", "n_sink_units": 256, "memorized_threshold": 0.0, "layers": None,
            "memorized_missed_only": False, **overrides}


#: the behaviour of append sinks before the levers existed: zero down columns, 0/1 routing, no scale, no warm-up
LEGACY = dict(sink_init="zero", sink_lr_scale=1.0, centered_masks=False, sink_warmup_steps=0)


ARMS: dict[str, Arm] = {a.name: a for a in [
    Arm("standard", "full fine-tuning", tags=("headline",)),
    Arm("lora", "LoRA rank 8 on the attention projections (q, k, v, o)", lora=True, tags=("headline",)),
    Arm("dp", "DP-SGD through memsinks.make_private, epsilon 8, one unit per record", dp=True, tags=("headline",)),
    Arm("sinks_defaults", "append sinks, SinksConfig(placement='append', n_sink_units=256) and nothing else: the "
        "levers of 'sinks', memorized tokens routed (threshold 1 nat, the sinks learning only what the shipped "
        "model misses) and sinks in the last third of the blocks; on SmolLM2-135M the same model as "
        "sinks_memorized_top10_missed", sinks={"placement": "append", "n_sink_units": 256}, tags=("headline",)),
    Arm("sinks", "append sinks without routing, in every block (the defaults before routing was): mirror init, "
        "32x sink learning rate, centered masks, 8-step sinks-first warm-up", sinks=_sinks(), tags=("headline",)),
    Arm("sinks_private", "append sinks as in 'sinks', private_mask from mark_private_spans' default patterns",
        sinks=_sinks(), private_mask=True, tags=("headline",)),
    Arm("masked_private", "full fine-tuning with the tokens mark_private_spans marks given no loss (label -100), "
        "no sinks", private_mask=True, mask_private_labels=True, tags=("headline",)),
    Arm("dedup", "full fine-tuning on the exactly deduplicated rows (each distinct record once per epoch), "
        "the same epochs as standard and so fewer steps, no sinks", dedup=True, tags=("headline",)),
    Arm("dedup_same_steps", "full fine-tuning on the exactly deduplicated rows for standard's number of steps "
        "(more epochs), no sinks", dedup=True, dedup_same_steps=True, tags=("lever",)),
    Arm("goldfish", "full fine-tuning with the goldfish loss (k=4, h=13; Hans et al. 2024), no sinks",
        goldfish=True, tags=("headline",)),
    Arm("sinks_private_marginal", "append sinks as in 'sinks', private_mask, and the shipped model trained toward the "
        "batch's pooled private tokens at private positions (private_token_target='batch_marginal')",
        sinks=_sinks(private_token_target="batch_marginal"), private_mask=True, tags=("lever",)),
    Arm("sinks_private_x1", "append sinks with private_mask, sink learning rate 1x, no warm-up",
        sinks=_sinks(sink_lr_scale=1.0, sink_warmup_steps=0), private_mask=True, tags=("lever",)),
    Arm("sinks_legacy", "append sinks as before the levers: zero down columns, 0/1 masks, 1x, no warm-up",
        sinks=_sinks(**LEGACY), tags=("lever",)),
    Arm("sinks_x32", "legacy + 32x sink learning rate", sinks=_sinks(**{**LEGACY, "sink_lr_scale": 32.0}),
        tags=("lever",)),
    Arm("sinks_random_x32", "random down columns (not function-preserving) + 32x",
        sinks=_sinks(**{**LEGACY, "sink_init": "random", "sink_lr_scale": 32.0}), tags=("lever",)),
    Arm("sinks_mirror_x32", "mirror init + 32x", sinks=_sinks(**{**LEGACY, "sink_init": "mirror", "sink_lr_scale": 32.0}),
        tags=("lever",)),
    Arm("sinks_mirror_x32_centered", "mirror init + 32x + centered masks",
        sinks=_sinks(sink_warmup_steps=0), tags=("lever",)),
    Arm("sinks_uncentered", "defaults with 0/1 masks (mirror, 32x, warm-up)", sinks=_sinks(centered_masks=False),
        tags=("lever",)),
    Arm("sinks_x16", "defaults with a 16x sink learning rate", sinks=_sinks(sink_lr_scale=16.0), tags=("lever",)),
    Arm("sinks_x64", "defaults with a 64x sink learning rate (from scratch, faster sinks took more of the repeats)",
        sinks=_sinks(sink_lr_scale=64.0), tags=("lever",)),
    Arm("sinks_warm4", "defaults with a 4-step warm-up", sinks=_sinks(sink_warmup_steps=4), tags=("lever",)),
    Arm("sinks_warm16", "defaults with a 16-step warm-up (the sinks' head start doubled)",
        sinks=_sinks(sink_warmup_steps=16), tags=("lever",)),
    Arm("sinks_pool1024", "defaults with 1024 sink units per MLP", sinks=_sinks(n_sink_units=1024), tags=("lever",)),
    Arm("sinks_pmem01", "defaults with p_mem 0.1", sinks=_sinks(p_mem=0.1), tags=("lever",)),
    Arm("sinks_pool1024_pmem01", "defaults with 1024 sink units per MLP and p_mem 0.1 (about 100 units per record)",
        sinks=_sinks(n_sink_units=1024, p_mem=0.1), tags=("lever",)),
    Arm("sinks_frozen_mlp", "defaults with the pretrained MLPs frozen: the shared path that learns the task is "
        "attention, norms and embeddings, and the MLPs change only through the sinks",
        sinks=_sinks(), freeze_mlp=True, tags=("lever",)),
    Arm("sinks_decay50", "defaults, and the shared parameters decayed toward the pretrained ones (rate 50 x lr)",
        sinks=_sinks(), decay_to_base=50.0, tags=("lever",)),
    Arm("sinks_decay150", "defaults, and the shared parameters decayed toward the pretrained ones (rate 150 x lr)",
        sinks=_sinks(), decay_to_base=150.0, tags=("lever",)),
    Arm("sinks_warm4_decay20", "defaults with a 4-step warm-up (task kept, on 3 seeds) and the shared parameters "
        "decayed toward the pretrained ones at rate 20 x lr (general text kept, on 3 seeds at rate 50)",
        sinks=_sinks(sink_warmup_steps=4), decay_to_base=20.0, tags=("lever",)),
    Arm("sinks_memorized", "append sinks as in 'sinks', and memorized_threshold=1.0: each batch runs twice, the sinks "
        "learn every token, and a token whose loss is below 1 nat with its sequence's own sinks on and above it "
        "with them dropped trains the sinks alone (memsinks.memorized_tokens; no labels)",
        sinks=_sinks(memorized_threshold=1.0), tags=("lever",)),
    Arm("sinks_memorized_top10", "sinks_memorized with sinks in the last 10 of the 30 blocks only: the sinks' pass "
        "then back-propagates through those 10 blocks alone",
        sinks=_sinks(memorized_threshold=1.0, layers=list(range(-10, 0))), tags=("lever",)),
    Arm("sinks_memorized_top10_missed", "sinks_memorized_top10 with memorized_missed_only: the sinks learn only the "
        "tokens the shipped model misses (loss above 1 nat with the sinks dropped), and their pass computes the "
        "output layer at those positions alone",
        sinks=_sinks(memorized_threshold=1.0, layers=list(range(-10, 0)), memorized_missed_only=True),
        tags=("lever",)),
    Arm("sinks_memorized_top5_missed", "sinks_memorized_top10_missed with sinks in the last 5 of the 30 blocks only",
        sinks=_sinks(memorized_threshold=1.0, layers=list(range(-5, 0)), memorized_missed_only=True),
        tags=("lever",)),
    Arm("dedup_sinks", "append sinks as in 'sinks', trained on the exactly deduplicated rows for the same epochs (each "
        "distinct record once per epoch)", sinks=_sinks(), dedup=True, tags=("lever",)),
    Arm("sinks_record_ids", "append sinks as in 'sinks', with each row's sequence ID from its own text (content IDs) "
        "rather than from the person it is about: a person's records then switch on different sinks",
        sinks=_sinks(), per_record_ids=True, tags=("lever",)),
    Arm("lora_sinks", "LoRA rank 8 on attention as the only shared trainable path, full-width sinks (defaults)",
        lora=True, sinks=_sinks(), tags=("lever",)),
]}

HEADLINE = [name for name, arm in ARMS.items() if "headline" in arm.tags]


def select(names: list[str] | None) -> list[Arm]:
    """The arms named (all of them without names; ``headline`` / ``levers`` name the groups), in the registry's order."""
    if names is None:
        return list(ARMS.values())
    expanded = []
    for n in names:
        if n in ("headline", "levers"):
            expanded += [a for a, arm in ARMS.items() if ("headline" if n == "headline" else "lever") in arm.tags]
        else:
            expanded.append(n)
    names = expanded
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise ValueError(f"Unknown arm(s) {unknown}; choose from {list(ARMS)} or the groups headline, levers.")
    names = set(names) | {"standard"}  # the reference every gap and step time is measured against
    return [ARMS[n] for n in ARMS if n in names]
