"""`PrivacyConfig`: the settings of DP-SGD, validated on creation and saved beside the checkpoint.

Like ``SinksConfig`` (and peft's ``LoraConfig``), a small dataclass that checks every field
when it is made, so that a wrong setting fails before any data is touched, and that
``save_pretrained`` writes as ``privacy_config.json`` into the output and checkpoint folders.
Each field's meaning is its ``metadata["help"]``, the one place it is written (the recipe's
``--help-config`` prints it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from memsinks._saved_config import SavedConfig

PRIVACY_CONFIG_NAME = "privacy_config.json"
ACCOUNTANTS = ("prv", "rdp")
CLIPPING_MODES = ("auto", "hooks", "ghost")
PRIVACY_UNITS = ("example", "sequence_id")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class PrivacyConfig(SavedConfig):
    """DP-SGD settings: what is protected, how much noise, how gradients are clipped (see each field's help)."""

    CONFIG_NAME = PRIVACY_CONFIG_NAME

    target_epsilon: float | None = field(default=None, metadata={"help": (
        "The ε to reach at `delta` after the planned number of optimizer steps: the noise multiplier is calibrated "
        "to it, and training stops when it is spent. Give exactly one of target_epsilon and noise_multiplier.")})
    noise_multiplier: float | None = field(default=None, metadata={"help": (
        "σ: the standard deviation of the Gaussian noise added to the sum of clipped gradients, in units of "
        "max_grad_norm. ε is then reported as it grows, with no stopping rule.")})
    delta: float | None = field(default=None, metadata={"help": (
        "The δ of the (ε, δ) guarantee. None: 0.01 / N for N privacy units (examples or distinct sequence IDs), so "
        "that the mechanism publishing each unit with probability δ exposes nobody with probability 99%. A δ of "
        "1 / N or more is refused unless allow_large_delta is set.")})
    max_grad_norm: float = field(default=1.0, metadata={"help": (
        "C: the bound on the L2 norm of one privacy unit's gradient (over all trainable parameters together) after "
        "clipping.")})
    accountant: str = field(default="prv", metadata={"help": (
        "'prv' (Gopi et al. 2021, numerical composition of privacy loss distributions, tight) or 'rdp' (Rényi DP, "
        "Mironov 2017; looser, faster).")})
    clipping: str = field(default="auto", metadata={"help": (
        "How per-unit gradient norms are obtained, all in one backward pass and to the same clipped gradient: "
        "'hooks' materialises each unit's gradient of each parameter (fastest; memory ~ units x parameters); "
        "'ghost' computes norms from layer inputs and output gradients (Li et al. 2022; memory ~ tokens x layer "
        "widths); 'auto' materialises unless that takes more than twice the memory of the ghost factors.")})
    privacy_unit: str = field(default="example", metadata={"help": (
        "'example' (each training row is one unit) or 'sequence_id' (user-level: all rows sharing a sequence_ids "
        "value form one unit, sampled, clipped and counted as a whole).")})
    reproducible: bool = field(default=False, metadata={"help": (
        "Derive the Poisson sampling and the noise from TrainingArguments.seed, so that runs (and resumed runs) "
        "repeat exactly. INSECURE: anyone who knows the seed knows the draws, and the run is not private; for "
        "debugging and tests. By default both come from the operating system's entropy, never stored.")})
    allow_large_delta: bool = field(default=False, metadata={"help": (
        "Accept a delta of 1 / (number of units) or more, which a mechanism publishing one unit's data outright "
        "would meet.")})
    physical_batch_size: int | None = field(default=None, metadata={"help": (
        "The most rows one forward/backward pass holds; a sampled (logical) batch is processed in pieces of at most "
        "this many rows whose clipped gradients are summed before the one noisy step. None: the Trainer's "
        "per_device_train_batch_size.")})

    def __post_init__(self) -> None:
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            given = "both were given" if self.target_epsilon is not None else "neither was given"
            raise ValueError(
                f"PrivacyConfig needs exactly one of target_epsilon and noise_multiplier; {given}. Give "
                "target_epsilon=... to have the noise calibrated to a budget, or noise_multiplier=... to fix the "
                "noise and have ε reported as it grows."
            )
        if self.target_epsilon is not None:
            if not _is_number(self.target_epsilon) or not 0 < self.target_epsilon < math.inf:
                raise ValueError(
                    f"PrivacyConfig.target_epsilon must be a finite number > 0; got {self.target_epsilon!r}.")
            self.target_epsilon = float(self.target_epsilon)
        if self.noise_multiplier is not None:
            if not _is_number(self.noise_multiplier) or not 0 < self.noise_multiplier < math.inf:
                raise ValueError(
                    f"PrivacyConfig.noise_multiplier must be a finite number > 0 (0 means no privacy at all: "
                    f"ε = ∞); got {self.noise_multiplier!r}."
                )
            self.noise_multiplier = float(self.noise_multiplier)
        if self.delta is not None:
            if not _is_number(self.delta) or not 0 < self.delta < 1:
                raise ValueError(
                    f"PrivacyConfig.delta must be in (0, 1), well below 1 / (number of privacy units); got "
                    f"{self.delta!r}. Leave it None for 0.01 / (number of units)."
                )
            self.delta = float(self.delta)
        if not _is_number(self.max_grad_norm) or not 0 < self.max_grad_norm < math.inf:
            raise ValueError(f"PrivacyConfig.max_grad_norm must be a finite number > 0; got {self.max_grad_norm!r}.")
        self.max_grad_norm = float(self.max_grad_norm)
        for name in ("reproducible", "allow_large_delta"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"PrivacyConfig.{name} must be True or False; got {getattr(self, name)!r}.")
        _check_choice("accountant", self.accountant, ACCOUNTANTS)
        _check_choice("clipping", self.clipping, CLIPPING_MODES)
        _check_choice("privacy_unit", self.privacy_unit, PRIVACY_UNITS)
        if self.physical_batch_size is not None and (
            not isinstance(self.physical_batch_size, int) or isinstance(self.physical_batch_size, bool)
            or self.physical_batch_size < 1
        ):
            raise ValueError(
                f"PrivacyConfig.physical_batch_size must be a positive int or None; got {self.physical_batch_size!r}."
            )

    @classmethod
    def _missing_message(cls, directory) -> str:
        return (
            f"No {PRIVACY_CONFIG_NAME} in {directory}: it was not written by a run under memsinks.make_private."
        )


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"PrivacyConfig.{name} must be one of {choices}; got {value!r}.")
