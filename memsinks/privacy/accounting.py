"""ε from an accountant history, and the noise calibration and step budget that invert it.

A history is Opacus's: ``[(noise_multiplier, sample_rate, steps), ...]``. ε is computed
with Opacus's accountants from it, so it is exactly what an independent
``opacus.accountants.PRVAccountant`` (or ``RDPAccountant``) with the same history reports.
"""

from __future__ import annotations

import math

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
    """ε at ``delta`` after ``history``; 0 before any step, ∞ if any step had no noise.

    Never negative: where the privacy loss is so small that the PRV accountant's numerical
    upper bound falls below zero, (0, δ)-DP holds and 0 is reported. A NaN is an error.
    """
    history = [h for h in history if h[2] > 0]
    if not history:
        return 0.0
    if any(h[0] <= 0 for h in history):
        return math.inf
    accountant = make_accountant(name, history)
    if name == "prv":
        eps = float(accountant.get_epsilon(delta=delta, eps_error=EPS_ERROR))
    else:
        eps = float(accountant.get_epsilon(delta=delta))
    if math.isnan(eps):
        raise ValueError(f"The {name} accountant gave no ε for history {history} at delta={delta}.")
    return max(eps, 0.0)


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
    if accountant == "prv" and target_epsilon <= EPS_ERROR:
        raise ValueError(
            f"target_epsilon={target_epsilon} at delta={delta:.3g} cannot be reached with the PRV accountant: its "
            f"bounds on ε are computed to within {EPS_ERROR}, so a target at or below that cannot be certified. Use "
            "accountant='rdp', or raise target_epsilon.")
    if epsilon_of(accountant, [(MAX_NOISE_MULTIPLIER, sample_rate, steps)], delta) > target_epsilon:
        raise ValueError(
            f"target_epsilon={target_epsilon} at delta={delta:.3g} over {steps} steps at sampling rate "
            f"{sample_rate:.4g} needs a noise multiplier of {MAX_NOISE_MULTIPLIER:.0f} or more: the noise would drown "
            f"the gradient (at least {MAX_NOISE_MULTIPLIER:.0f}x a unit's clipped gradient per step). {hint}"
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
        spent = with_steps(history, noise_multiplier, sample_rate, n)
        return n == 0 or epsilon_of(accountant, spent, delta) <= target_epsilon

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
