"""Differentially private training (DP-SGD through Opacus) for the stock ``transformers.Trainer``.

``trainer = memsinks.make_private(trainer, memsinks.PrivacyConfig(target_epsilon=8))`` and train.
The package is split by concern, as Opacus is:

- ``config``: ``PrivacyConfig``, validated on creation, saved as ``privacy_config.json``;
- ``sampling``: Poisson sampling of privacy units (examples or sequence IDs) and the loader;
- ``grad_sample``: per-unit gradient norms and clipped sums in one backward pass;
- ``optimizer``: Opacus's noisy step on those sums;
- ``ledger``: the accountant history, on disk before every update, and ε;
- ``validators``: the checks ``make_private`` runs before training;
- ``trainer``: ``make_private`` itself.

See docs/privacy.md for what the guarantee covers.
"""

from memsinks.privacy.config import PrivacyConfig


def make_private(trainer, config: PrivacyConfig):
    """Switch a stock ``transformers.Trainer`` to DP-SGD; returns the same trainer, now private.

    See ``memsinks.privacy.trainer.make_private`` (imported on first use, so that
    ``import memsinks`` does not load the Trainer and Opacus).
    """
    from memsinks.privacy.trainer import make_private as _make_private

    return _make_private(trainer, config)


__all__ = ["PrivacyConfig", "make_private"]
