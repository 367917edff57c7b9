"""ε from an accountant history, and the noise calibration and step budget that invert it.

A history is Opacus's: ``[(noise_multiplier, sample_rate, steps), ...]``. ε is computed
with Opacus's accountants from it, so it is exactly what an independent
``opacus.accountants.PRVAccountant`` (or ``RDPAccountant``) with the same history reports.
"""

from __future__ import annotations

import functools
import math

EPS_ERROR = 0.01  # PRV accountant: the reported ε is an upper bound within this of the true one

#: a calibrated noise multiplier's ε lies in [target - EPS_TOLERANCE, target] (Opacus's search tolerance)
EPS_TOLERANCE = 0.01

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
    Each distinct (accountant, history, delta) is computed once per process: a PRV evaluation
    takes up to a second, and a run asks for the same one several times (the calibrated
    noise's ε, then the step budget's check of the planned steps; the last step's log, the
    budget warning and the checkpoint's ledger).
    """
    return _epsilon(name, tuple(tuple(h) for h in history if h[2] > 0), delta)


@functools.lru_cache(maxsize=1024)
def _epsilon(name: str, history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    if not history:
        return 0.0
    if any(h[0] <= 0 for h in history):
        return math.inf
    accountant = make_accountant(name, list(history))
    if name == "prv":
        eps = float(accountant.get_epsilon(delta=delta, eps_error=EPS_ERROR))
    else:
        eps = float(accountant.get_epsilon(delta=delta))
    if math.isnan(eps):
        raise ValueError(f"The {name} accountant gave no ε for history {list(history)} at delta={delta}.")
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
    eps_max = epsilon_of(accountant, [(MAX_NOISE_MULTIPLIER, sample_rate, steps)], delta)
    if eps_max > target_epsilon:
        raise ValueError(
            f"target_epsilon={target_epsilon} at delta={delta:.3g} over {steps} steps at sampling rate "
            f"{sample_rate:.4g} needs a noise multiplier of {MAX_NOISE_MULTIPLIER:.0f} or more: the noise would drown "
            f"the gradient (at least {MAX_NOISE_MULTIPLIER:.0f}x a unit's clipped gradient per step). {hint}"
        )
    sigma = smallest_noise(lambda s: epsilon_of(accountant, [(s, sample_rate, steps)], delta), target_epsilon,
                           EPS_TOLERANCE, MAX_NOISE_MULTIPLIER, eps_max)
    return float(sigma)


def smallest_noise(epsilon_at, target: float, tolerance: float, high: float, eps_high: float,
                   max_evaluations: int = 60) -> float:
    """A noise multiplier σ in (0, ``high``] with ``target - tolerance <= epsilon_at(σ) <= target``.

    ``epsilon_at(σ)`` is ε after the planned steps at noise σ, decreasing in σ; each call is
    one accountant evaluation, the cost that matters (PRV: a fraction of a second).
    ``eps_high = epsilon_at(high)`` must be at most ``target``. Opacus's ``get_noise_multiplier``
    bisects σ over [0, 20] in about 17 evaluations; log ε is close to linear in log σ, so
    false position on (log σ, log ε), aimed at the middle of the accepted band, with the
    Illinois halving when one end stalls, needs a handful. The answer is always a σ whose ε
    the accountant certified at or under the target; if the band is not reached within
    ``max_evaluations``, the smallest such σ found (it spends less than the target). An
    evaluation that fails (with too little noise an accountant can overflow) counts as ε above
    the target, so the search moves toward more noise.
    """
    if eps_high > target:
        raise ValueError(f"even a noise multiplier of {high:g} gives ε = {eps_high:.4g} > {target:g}")
    aim = math.log(target - tolerance / 2)

    def y(eps: float) -> float:
        return math.log(eps) - aim if 0 < eps < math.inf else (math.inf if eps > 0 else -math.inf)

    low, y_low = None, math.inf  # the largest σ seen above the target (y > 0), and its y
    y_high, before = y(eps_high), None  # ``before``: the previous (σ, y) at or under the target
    kept = 0  # > 0: ``high`` moved that many times in a row (``low`` stalled); < 0: the reverse
    for _ in range(max_evaluations):
        if eps_high >= target - tolerance:
            return high
        sigma = _next_noise(low, y_low, high, y_high, before, kept)
        try:
            eps = epsilon_at(sigma)
        except (ValueError, RuntimeError, OverflowError, ZeroDivisionError):
            eps = math.inf
        if eps <= target:
            before, (high, eps_high, y_high) = (high, y_high), (sigma, eps, y(eps))
            kept = max(kept, 0) + 1
        else:
            low, y_low = sigma, y(eps)
            kept = min(kept, 0) - 1
    return high


def _next_noise(low, y_low: float, high: float, y_high: float, before, kept: int) -> float:
    """The next σ to evaluate in ``smallest_noise``'s search (y = log ε - aim at each end)."""
    if low is None:  # nothing above the target yet: extrapolate from the two smallest σ under it, else a quarter
        if before is not None and math.isfinite(y_high) and math.isfinite(before[1]) and before[1] != y_high:
            x0, x1 = math.log(before[0]), math.log(high)
            sigma = math.exp(x1 - y_high * (x1 - x0) / (y_high - before[1]))
            return min(max(sigma, high / 16), high / 2)
        return high / 4
    if not (math.isfinite(y_low) and math.isfinite(y_high)):
        return math.sqrt(low * high)
    w_low = y_low / 2 if kept >= 2 else y_low
    w_high = y_high / 2 if kept <= -2 else y_high
    x0, x1 = math.log(low), math.log(high)
    sigma = math.exp(x1 - w_high * (x1 - x0) / (w_high - w_low))
    return sigma if low < sigma < high else math.sqrt(low * high)


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
