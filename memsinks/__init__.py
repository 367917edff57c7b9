"""memsinks: memorization-aware training of Hugging Face causal LMs with memorization sinks.

Public API::

    model = memsinks.add_sinks(model, memsinks.SinksConfig(placement="append", n_sink_units=256))
    ds = memsinks.assign_sequence_ids(ds)
    ds = memsinks.mark_private_spans(ds, tokenizer)   # optional: private tokens train only the sinks
    collator = memsinks.SinksDataCollator(tokenizer)
    with memsinks.sinks_mode(model, "drop"): ...
    model.save_pretrained(d); model = memsinks.from_pretrained(d)
    plain = memsinks.remove_sinks(model)
    trainer = memsinks.make_private(trainer, memsinks.PrivacyConfig(target_epsilon=8.0))
"""

from memsinks._version import __version__
from memsinks.architectures import register_architecture, supported_model_types
from memsinks.config import SinksConfig
from memsinks.data import SinksDataCollator, assign_sequence_ids, content_id, key_id
from memsinks.model import add_sinks, get_sinks_config, has_sinks, remove_sinks, sinks_mode
from memsinks.privacy import PrivacyConfig, make_private
from memsinks.private_spans import mark_private_spans
from memsinks.save_and_load import from_pretrained

__all__ = [
    "__version__",
    "SinksConfig",
    "add_sinks",
    "remove_sinks",
    "from_pretrained",
    "sinks_mode",
    "has_sinks",
    "get_sinks_config",
    "assign_sequence_ids",
    "SinksDataCollator",
    "mark_private_spans",
    "content_id",
    "key_id",
    "register_architecture",
    "supported_model_types",
    "PrivacyConfig",
    "make_private",
]
