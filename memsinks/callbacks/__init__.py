"""Trainer callbacks that run the memorization probes during training and act on what they find.

    from memsinks.callbacks import MemorizationAlert, ProbeCallback
    trainer = Trainer(..., callbacks=[
        ProbeCallback(tokenizer, members=train_sample, nonmembers=heldout, every_n_steps=200),
        MemorizationAlert(above={"memorization/extraction_exact": 0.01}, stop_training=True),
    ])

Metrics are logged through ``Trainer.log`` under ``memorization/...`` and so reach
``trainer.state.log_history`` and every ``report_to`` integration. No training text is logged
unless asked for (``ProbeCallback(log_examples=...)``, redacted to a prefix).
"""

from memsinks.callbacks.alert import MemorizationAlert
from memsinks.callbacks.base import MemorizationCallback
from memsinks.callbacks.canary import CanaryCallback
from memsinks.callbacks.probe import ProbeCallback
from memsinks.callbacks.sink_gap import SinkGapCallback

__all__ = ["ProbeCallback", "SinkGapCallback", "CanaryCallback", "MemorizationAlert", "MemorizationCallback"]
