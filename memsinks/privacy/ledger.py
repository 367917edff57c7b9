"""The privacy ledger: every noisy step ever taken on the data, on disk before the step lands.

The ledger is an Opacus accountant's history, ``[(noise_multiplier, sample_rate, steps), ...]``,
plus what ε means (δ, privacy unit, accountant). It is rewritten atomically (temporary file,
fsync, rename) by the optimizer's step hook, after the noise is drawn and before the
parameters change, so a crash at any point leaves a record that counts at least every
update the model received. Resuming continues the same history: ε never resets.

ε is computed with Opacus's accountants from that history, so it is exactly what an
independent ``opacus.accountants.PRVAccountant`` (or ``RDPAccountant``) with the same
history reports.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

LEDGER_NAME = "privacy_ledger.json"
EPS_ERROR = 0.01  # PRV accountant: the reported ε is an upper bound within this of the true one

#: a calibrated noise multiplier above this means the target ε cannot be reached usefully:
#: the noise would be hundreds of times the clipped gradient of a unit
MAX_NOISE_MULTIPLIER = 100.0


def make_accountant(name: str, history: list[tuple[float, float, int]] | None = None):
    """An Opacus accountant (``"prv"`` or ``"rdp"``) holding ``history``."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    accountant = {"prv": PRVAccountant, "rdp": RDPAccountant}[name]()
    accountant.history = [tuple(h) for h in (history or [])]
    return accountant


def epsilon_of(name: str, history: list[tuple[float, float, int]], delta: float) -> float:
    """ε at ``delta`` after ``history``; 0 before any step, ∞ if any step had no noise."""
    history = [h for h in history if h[2] > 0]
    if not history:
        return 0.0
    if any(h[0] <= 0 for h in history):
        return math.inf
    accountant = make_accountant(name, history)
    if name == "prv":
        return float(accountant.get_epsilon(delta=delta, eps_error=EPS_ERROR))
    return float(accountant.get_epsilon(delta=delta))


def with_steps(history: list, noise_multiplier: float, sample_rate: float, steps: int) -> list:
    """``history`` followed by ``steps`` more steps of (noise_multiplier, sample_rate), merged like Opacus does."""
    history = [tuple(h) for h in history]
    if steps <= 0:
        return history
    if history and history[-1][0] == noise_multiplier and history[-1][1] == sample_rate:
        last = history.pop()
        history.append((noise_multiplier, sample_rate, last[2] + steps))
    else:
        history.append((noise_multiplier, sample_rate, steps))
    return history


def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """The smallest noise multiplier (to Opacus's search tolerance) with ε <= target after ``steps`` steps.

    Raises ValueError, saying what to change, when the target cannot be reached.
    """
    from opacus.accountants.utils import get_noise_multiplier

    kwargs = {"eps_error": EPS_ERROR} if accountant == "prv" else {}
    hint = (
        "Raise target_epsilon, train for fewer steps (max_steps / num_train_epochs), use a smaller batch "
        "(per_device_train_batch_size x gradient_accumulation_steps) relative to the data, or give "
        "noise_multiplier instead of target_epsilon."
    )
    try:
        sigma = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                     steps=steps, accountant=accountant, epsilon_tolerance=0.01, **kwargs)
    except (ValueError, RuntimeError, OverflowError) as err:
        raise ValueError(
            f"target_epsilon={target_epsilon} at delta={delta:.3g} cannot be reached in {steps} steps at sampling rate "
            f"{sample_rate:.4g} ({err}). {hint}"
        ) from None
    if sigma > MAX_NOISE_MULTIPLIER:
        raise ValueError(
            f"target_epsilon={target_epsilon} at delta={delta:.3g} over {steps} steps at sampling rate "
            f"{sample_rate:.4g} needs a noise multiplier of {sigma:.0f}: the noise would drown the gradient "
            f"(more than {MAX_NOISE_MULTIPLIER:.0f}x a unit's clipped gradient per step). {hint}"
        )
    return float(sigma)


def steps_within_budget(accountant: str, history: list, noise_multiplier: float, sample_rate: float, delta: float,
                        target_epsilon: float, guess: int = 1) -> int:
    """How many more steps of (noise_multiplier, sample_rate) keep ε <= target_epsilon after ``history``.

    ``guess`` (the planned steps the noise was calibrated for) makes the usual case two
    accountant evaluations: ``guess`` fits and ``guess + 1`` does not.
    """

    def fits(n: int) -> bool:
        return n == 0 or epsilon_of(accountant, with_steps(history, noise_multiplier, sample_rate, n), delta) <= target_epsilon

    low = max(0, int(guess))
    if not fits(low):
        high = low
        low = 0
    else:
        high = low + 1
        step = 1
        while fits(high):
            low, step = high, step * 2
            high = low + step
            if high > 1 << 40:
                return high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


class PrivacyLedger:
    """The accountant history of one training run, persisted at ``path`` on every step.

    Attributes:
        accountant: "prv" or "rdp".
        delta: the δ at which ε is reported.
        history: [(noise_multiplier, sample_rate, steps), ...] in the order taken.
        info: what the numbers refer to (privacy unit, number of units, C, batch size...).
    """

    def __init__(self, path: str | None, accountant: str, delta: float, info: dict[str, Any] | None = None,
                 history: list | None = None):
        self.path = path
        self.accountant = accountant
        self.delta = float(delta)
        self.info = dict(info or {})
        self.history: list[tuple[float, float, int]] = [tuple(h) for h in (history or [])]
        self._epsilon_cache: tuple[int, float] | None = None

    @property
    def steps(self) -> int:
        return sum(h[2] for h in self.history)

    def record_step(self, noise_multiplier: float, sample_rate: float) -> None:
        """Add one step and write the ledger to disk (before the update it pays for is applied)."""
        self.history = with_steps(self.history, float(noise_multiplier), float(sample_rate), 1)
        if self.path is not None:
            self.save(self.path)

    def epsilon(self) -> float:
        steps = self.steps
        if self._epsilon_cache is None or self._epsilon_cache[0] != steps:
            self._epsilon_cache = (steps, epsilon_of(self.accountant, self.history, self.delta))
        return self._epsilon_cache[1]

    def to_dict(self, with_epsilon: bool = False) -> dict[str, Any]:
        from memsinks._version import __version__

        out = {
            "memsinks_version": __version__,
            "accountant": self.accountant,
            "delta": self.delta,
            "steps": self.steps,
            "history": [list(h) for h in self.history],
            **self.info,
        }
        if with_epsilon:
            eps = self.epsilon()
            out["epsilon"] = eps if math.isfinite(eps) else None
            out["epsilon_is_infinite"] = not math.isfinite(eps)
        return out

    def save(self, path: str, with_epsilon: bool = False) -> str:
        """Write the ledger to ``path`` atomically and durably (temp file, fsync, rename)."""
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(with_epsilon), f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str, new_path: str | None = None) -> "PrivacyLedger":
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        info = {k: v for k, v in data.items()
                if k not in ("memsinks_version", "accountant", "delta", "steps", "history", "epsilon",
                             "epsilon_is_infinite")}
        return cls(new_path, data["accountant"], data["delta"], info, [tuple(h) for h in data["history"]])
