"""ROC summaries of a membership score: area under the curve and TPR at a fixed low FPR.

Convention: a higher score means "more likely a member". Low-FPR operating points are what
matter for privacy (Carlini et al. 2022, "Membership Inference Attacks From First
Principles"); they need enough non-members to be meaningful (at FPR 0.1%, over 1000).
"""

from __future__ import annotations

import numpy as np


def _check(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(members, dtype=np.float64).ravel()
    neg = np.asarray(nonmembers, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError(
            f"ROC needs at least one member and one non-member score; got {pos.size} and {neg.size}."
        )
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(neg))):
        raise ValueError("Membership scores must be finite; got NaN or inf.")
    return pos, neg


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, ties sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_vals)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [values.size]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    return ranks


def roc_auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """Area under the ROC curve: P(member score > non-member score) + 0.5 P(tie) (Mann-Whitney U)."""
    pos, neg = _check(members, nonmembers)
    ranks = _average_ranks(np.concatenate([pos, neg]))
    u = ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float) -> float:
    """The highest true-positive rate of a threshold rule ``score > t`` whose false-positive rate is <= ``fpr``.

    With ``n`` non-members at most ``floor(fpr * n)`` of them may score above the threshold, so
    below ``1 / n`` this is the share of members scoring above every non-member.
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1]; got {fpr}.")
    pos, neg = _check(members, nonmembers)
    allowed = int(np.floor(fpr * neg.size + 1e-9))
    if allowed >= neg.size:
        return 1.0
    threshold = np.sort(neg)[::-1][allowed]  # the (allowed+1)-th highest non-member score
    return float(np.mean(pos > threshold))
