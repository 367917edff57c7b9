"""Differentially private training (DP-SGD through Opacus) for the stock ``transformers.Trainer``.

``trainer = memsinks.make_private(trainer, memsinks.PrivacyConfig(target_epsilon=8))`` and train.
The package is split by concept, as Opacus is:

- ``config``: ``PrivacyConfig``, validated on creation, saved as ``privacy_config.json``;
- ``engine``: ``make_private``, a short sequence of ``_prepare_*`` steps;
- ``trainer``: ``PrivateTrainer`` (and ``PrivateTrainerMixin`` for a Trainer subclass of your own);
- ``run``: ``PrivateRun``, what ``make_private`` fixed, connected to the ledger;
- ``dataset``, ``sampling``: the training set as privacy units; their Poisson sampling and the loader;
- ``randomness``: where sampling and noise come from (the OS's entropy, never a checkpoint);
- ``inputs``, ``loss``: a batch as the forward's arguments; each row's own loss;
- ``grad_sample``: per-unit gradient norms and clipped sums in one backward pass;
- ``optimizer``: Opacus's noisy step on those sums (the noise added once, also under DDP);
- ``accounting``, ``ledger``: ε from the accountant history; the history on disk, resume and budget;
- ``validators``: the checks ``make_private`` runs before training.

See docs/privacy.md for what the guarantee covers.
"""

from memsinks.privacy.config import PrivacyConfig

_LAZY = {"PrivateTrainer": "memsinks.privacy.trainer", "PrivateTrainerMixin": "memsinks.privacy.trainer",
         "private_trainer_class": "memsinks.privacy.trainer"}


def make_private(trainer, config: PrivacyConfig):
    """Switch a stock ``transformers.Trainer`` to DP-SGD; returns the private trainer to train.

    See ``memsinks.privacy.engine.make_private`` (imported on first use, so that
    ``import memsinks`` does not load the Trainer and Opacus).
    """
    from memsinks.privacy.engine import make_private as _make_private

    return _make_private(trainer, config)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'memsinks.privacy' has no attribute {name!r}")


__all__ = ["PrivacyConfig", "PrivateTrainer", "PrivateTrainerMixin", "make_private", "private_trainer_class"]
