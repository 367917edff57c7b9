"""The routing record: what the weights themselves say about the sinks they were trained with.

``sinks_config.json`` can be edited, or copied from another run, and the weights cannot tell:
a checkpoint would then load with other sink units, or other IDs' units, and an export would
prune the wrong ones. So the save of a model with sinks also writes, beside the weights, the
routing-relevant fields of its ``SinksConfig`` (``config.ROUTING_FIELDS``), their digest and
the pool size of each block: into ``config.json`` (which always travels with the weights) for
a full checkpoint, into the metadata of ``sinks.safetensors`` for a peft one. Loading compares
the record with the sinks config and refuses a difference, naming the field.

Checkpoints saved before the record existed carry none; they load with a warning.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from memsinks.config import ROUTING_FIELDS, SINKS_CONFIG_NAME, SinksConfig, routing_digest
from memsinks.errors import DamagedCheckpointError, WeightsMismatchError
from memsinks.routing import SinkRouter

logger = logging.getLogger("memsinks")

RECORD_KEY = "memsinks_routing"


def make_record(router: SinkRouter) -> dict[str, Any]:
    """The record of ``router``'s routing: {"fields", "digest", "pool_sizes" (block index as str -> pool)}."""
    fields = router.config.routing_fields()
    return {"fields": fields, "digest": routing_digest(fields),
            "pool_sizes": {str(spec.layer): spec.pool for spec in router.specs}}


def parse_record(value: Any, where: str) -> dict[str, Any] | None:
    """A record read from ``where`` (a dict, or its JSON text), checked for damage; None when there is none."""
    if value is None:
        logger.warning(
            "%s has no memsinks routing record (the checkpoint was saved by an older memsinks), so memsinks cannot "
            "check that %s is the one saved with these weights. Re-save the model to add the record.",
            where, SINKS_CONFIG_NAME)
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    ok = (isinstance(value, dict) and isinstance(value.get("fields"), dict) and isinstance(value.get("digest"), str)
          and isinstance(value.get("pool_sizes"), dict)
          and all(k.isdigit() and type(v) is int for k, v in value["pool_sizes"].items()))
    if not ok:
        raise DamagedCheckpointError(f"The memsinks routing record ({RECORD_KEY!r}) in {where} is damaged: it is not an "
                                     "object with 'fields', 'digest' and 'pool_sizes'. Restore the file that was "
                                     "saved with these weights.")
    if routing_digest(value["fields"]) != value["digest"]:
        raise DamagedCheckpointError(f"The memsinks routing record ({RECORD_KEY!r}) in {where} was edited: its digest "
                                     "does not match its fields. Restore the file that was saved with these weights.")
    return value


def check_fields(record: dict[str, Any] | None, config: SinksConfig, where: str, config_path: str) -> None:
    """Raise WeightsMismatchError naming every routing field in which ``config`` differs from ``record``."""
    if record is None:
        return
    saved, current = record["fields"], config.routing_fields()
    differ = [name for name in ROUTING_FIELDS if saved.get(name) != current[name]]
    if differ:
        details = "; ".join(f"{name} is {current[name]!r} there but was {saved.get(name)!r}" for name in differ)
        raise WeightsMismatchError(
            f"{config_path} does not describe these weights ({details} when they were saved, as {where} records). "
            f"Was it edited, or copied from another run? Use the {SINKS_CONFIG_NAME} saved with these weights.")


def check_pool_sizes(record: dict[str, Any] | None, router: SinkRouter, where: str) -> None:
    """Raise WeightsMismatchError naming the first block whose pool size differs from ``record``'s."""
    if record is None:
        return
    built = {str(spec.layer): spec.pool for spec in router.specs}
    saved = record["pool_sizes"]
    for layer in sorted(set(built) | set(saved), key=int):
        if built.get(layer) != saved.get(layer):
            raise WeightsMismatchError(
                f"Block {layer} has {built.get(layer, 0)} sink units with this config but had {saved.get(layer, 0)} "
                f"when the weights were saved ({where}); the checkpoint's files come from different runs.")
