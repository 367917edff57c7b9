"""The fine-tuning isolation benchmark's settings: every number that shapes a result, written into ``results.json``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass
class FinetuneSettings:
    """Fine-tune a pretrained model on records with personal data; some records repeated.

    ``groups`` maps a repeat count to how many members are trained on that many times; the
    headline uses the group repeated most. ``members``: ``"copies"`` (a member is one record, trained
    on as that many exact copies) or ``"people"`` (a member is a person whose secret appears in that
    many distinct records, scored on another record of theirs). ``n_background`` records are seen once, ``n_heldout``
    never (they measure the task learned and are the non-members).
    """

    base_model: str | None = None
    groups: dict = field(default_factory=lambda: {1: 8, 4: 8, 16: 8})
    members: str = "copies"
    n_background: int = 48
    n_heldout: int = 24
    epochs: float = 3.0
    batch_size: int = 8
    learning_rate: float = 3e-4
    # general text the base model knows: what fine-tuning destroys
    n_general: int = 32
    general_window: int = 64
    # measurement
    exposure_samples: int = 200  # candidates per numeric secret for the skew-normal exposure estimate
    exposure_records: int = 4  # numeric secrets of the headline group whose exposure is measured
    # DP-SGD reference
    dp_epsilon: float = 8.0
    dp_max_grad_norm: float = 1.0
    # LoRA reference
    lora_rank: int = 8
    # goldfish loss reference (Hans et al. 2024's k and h): label-free, like the sinks' defaults
    goldfish_k: int = 4
    goldfish_h: int = 13
    # the tiny stand-in for a pretrained model (--quick, or no --base-model and no SmolLM2 installed)
    tiny_pretrain_steps: int = 60

    @classmethod
    def quick(cls, **overrides) -> "FinetuneSettings":
        return cls(**{**dict(groups={1: 2, 4: 2, 16: 2}, n_background=8, n_heldout=6, epochs=1.0, n_general=4,
                             exposure_samples=20, exposure_records=1, tiny_pretrain_steps=30), **overrides})

    def __post_init__(self):
        if self.members not in ("copies", "people"):
            raise ValueError(f"members must be 'copies' or 'people'; got {self.members!r}")

    @property
    def headline_repeats(self) -> int:
        return max(self.groups)


def to_dict(settings) -> dict:
    out = dataclasses.asdict(settings)
    out["groups"] = {str(k): v for k, v in settings.groups.items()}
    return out


def from_dict(stored: dict, source: str) -> FinetuneSettings:
    """The settings ``to_dict`` wrote (into ``source``, named in errors): every field, and no field this code lacks."""
    fields = {f.name for f in dataclasses.fields(FinetuneSettings)}
    unknown, missing = sorted(set(stored) - fields), sorted(fields - set(stored))
    if unknown or missing:
        raise ValueError(f"{source}: its settings do not match this benchmark's (unknown fields {unknown}, missing "
                         f"{missing}); it was written by other code. Rerun the arms, or report with that code.")
    return FinetuneSettings(**{**stored, "groups": {int(k): v for k, v in stored["groups"].items()}})


def differences(stored: dict, settings: FinetuneSettings) -> list[str]:
    """``field: stored -> now`` for each setting of ``stored`` (as ``to_dict`` wrote it) that ``settings`` changes."""
    now = json.loads(json.dumps(to_dict(settings)))
    return [f"{k}: {stored.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(stored) | set(now))
            if stored.get(k) != now.get(k)]
