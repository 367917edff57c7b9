"""The per-row causal-LM loss DP-SGD clips: each row's own mean next-token loss.

A batch loss averaged over all tokens of the batch (what HF models return) ties each row's
gradient to the other rows' token counts; DP-SGD needs one loss per row (then per unit),
independent of the rest of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def causal_lm_row_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each row over its unmasked targets.

    Args:
        logits: (B, T, V) model outputs.
        labels: (B, T) token IDs aligned with the inputs (shifted here), -100 where masked.
    Returns:
        (B,) float32; a row with no unmasked target has loss 0 and no gradient.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:].to(logits.device)
    per_token = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none",
    ).view(shift_labels.shape)
    counts = (shift_labels != IGNORE_INDEX).sum(1)
    return per_token.sum(1) / counts.clamp(min=1)
