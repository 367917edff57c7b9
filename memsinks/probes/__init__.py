"""Memorization probes: measurements that take a model and token sequences and return numbers."""

from memsinks.probes.likelihood import sequence_losses, token_nlls

__all__ = ["sequence_losses", "token_nlls"]
