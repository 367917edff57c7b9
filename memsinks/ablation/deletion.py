"""Targeted deletion: switch off, for good, the sink units of chosen documents.

Every sequence ID routes to a fixed random subset of each block's sink pool (``p_mem`` of it).
Training sends a document's memorization into the shared units and into its own subset;
deleting the ID zeroes the down-projection weights of its subset, which removes what that
subset holds and nothing of the shared units. The result is still a checkpoint with sinks
(same routing, same config): in ``own`` mode it computes what the input computed in
``exclude`` mode for the deleted IDs, and its ``drop`` mode is the input's ``drop`` mode,
unchanged. Units are shared between IDs, so other documents routed to some of the same
units lose those units too (see docs/ablation.md for what this does and does not guarantee).

IDs come as ints, or from texts hashed exactly as training hashed them
(``memsinks.ablation.sequences``: content IDs of the tokens, or key IDs of document keys).
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

import memsinks
from memsinks.ablation.checkpoint import load_sinks_checkpoint
from memsinks.ablation.export import (
    ExportResult, ExportVerificationError, check_reference_logits, copy_tokenizer, directory_size, logit_tolerance,
    mlp_width, probe_batch, run_verifier,
)
from memsinks.ablation.output_dir import atomic_output_dir, check_output_dir, write_export_marker
from memsinks.ablation.pool_units import units_of_ids, zero_pool_units
from memsinks.ablation.sequences import load_sequence_set
from memsinks.config import validate_sequence_id
from memsinks.model import get_router

DELETION_RECORD = "memsinks_deletion.json"
_UNRELATED_ID = 0x5EED  # an ID that is not deleted, so the check also covers documents that keep their sinks


def parse_ids(text: str) -> list[int]:
    """IDs from a comma- or space-separated string (``"123,456"``), each an int in [1, 2**63)."""
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts:
        raise ValueError("--exclude-ids needs at least one sequence ID, e.g. --exclude-ids 123,456.")
    ids = []
    for p in parts:
        try:
            value = int(p, 0)
        except ValueError:
            raise ValueError(f"--exclude-ids: {p!r} is not an integer sequence ID.") from None
        ids.append(validate_sequence_id(value, "--exclude-ids"))
    if 0 in ids:
        raise ValueError("--exclude-ids: ID 0 means 'no sinks' and has nothing to delete.")
    return list(dict.fromkeys(ids))


def ids_from_texts(path: str | os.PathLike, tokenizer, id_kind: str | None, wrap_eos: bool = False) -> list[int]:
    """The training IDs of the records of ``path`` (``memsinks.ablation.sequences`` formats).

    ``id_kind`` must be named ("content" or "key"): hashing with the wrong kind would delete
    some other document's sinks and leave the intended one untouched.
    """
    if id_kind is None:
        raise ValueError(
            "Deleting by texts needs the kind of ID training used: --id-kind content (the hash of the tokens, the "
            "default of memsinks.assign_sequence_ids) or --id-kind key (the hash of a document key, "
            "assign_sequence_ids(ds, from_column=...))."
        )
    return list(dict.fromkeys(load_sequence_set(path, tokenizer, id_kind, wrap_eos, need_tokens=False).ids))


def delete_ids(model: nn.Module, ids: Sequence[int]) -> int:
    """Zero, in place, the sink units of ``ids``; returns how many pool units were zeroed."""
    ids = [validate_sequence_id(i, "ids to delete") for i in ids]
    if not ids:
        raise ValueError("delete_ids needs at least one sequence ID.")
    return zero_pool_units(model, units_of_ids(model, ids))


# Runs in a fresh interpreter: the deletion checkpoint loaded by memsinks, own and drop logits against the input's.
_VERIFY_DELETION = """
import json, sys
import torch
from safetensors.torch import load_file
import memsinks
model_dir, probe_path = sys.argv[1], sys.argv[2]
probe = load_file(probe_path)
model = memsinks.from_pretrained(model_dir)
with torch.no_grad():
    with memsinks.sinks_mode(model, "own"):
        own = model(probe["input_ids"], sequence_ids=probe["sequence_ids"]).logits.float()
    with memsinks.sinks_mode(model, "drop"):
        drop = model(probe["input_ids"]).logits.float()
diff = max(float((own - probe["expected"]).abs().max()), float((drop - probe["expected_drop"]).abs().max()))
print(json.dumps({"max_abs_diff": diff}))
"""


def export_with_deletion(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    ids: Sequence[int],
    force: bool = False,
    trust_pickle: bool = False,
    progress: bool = True,
) -> ExportResult:
    """Write to ``out`` a checkpoint with sinks in which the sink units of ``ids`` are zeroed.

    Before ``out`` appears, a fresh process loads it with ``memsinks.from_pretrained`` and
    must reproduce the input's ``exclude``-mode logits (own routing, ``ids`` switched off)
    and its ``drop``-mode logits. Written atomically, like ``export_without_sinks``.
    """
    checkpoint = os.fspath(checkpoint)
    ids = [validate_sequence_id(i, "ids to delete") for i in ids]
    if not ids:
        raise ValueError("Targeted deletion needs at least one sequence ID.")
    check_output_dir(out, checkpoint, force)
    steps = tqdm(total=4, desc="delete", unit="step", disable=not progress)
    try:
        steps.set_postfix_str("loading")
        model = load_sinks_checkpoint(checkpoint, trust_pickle=trust_pickle)
        dtype = next(model.parameters()).dtype
        input_ids = probe_batch(model)
        seq_ids = torch.tensor([ids[0], _UNRELATED_ID if _UNRELATED_ID not in ids else _UNRELATED_ID + 1])
        with torch.no_grad():
            with memsinks.sinks_mode(model, "exclude", exclude_ids=ids):
                expected = model(input_ids, sequence_ids=seq_ids).logits.float()
            with memsinks.sinks_mode(model, "drop"):
                expected_drop = model(input_ids).logits.float()
        largest = max(check_reference_logits(expected, checkpoint), check_reference_logits(expected_drop, checkpoint))
        tol = logit_tolerance(dtype, torch.cat([expected, expected_drop]))
        steps.update()
        steps.set_postfix_str("zeroing the IDs' sinks")
        n_units = delete_ids(model, ids)
        steps.update()
        with atomic_output_dir(out, checkpoint, force) as tmp:
            steps.set_postfix_str("saving")
            model.save_pretrained(tmp)
            copied = copy_tokenizer(checkpoint, tmp)
            with open(os.path.join(tmp, DELETION_RECORD), "w", encoding="utf-8") as f:
                json.dump({"deleted_ids": ids, "zeroed_pool_units": n_units, "source": os.path.abspath(checkpoint)}, f,
                          indent=2)
            write_export_marker(tmp, "targeted deletion", checkpoint)
            steps.update()
            steps.set_postfix_str("verifying in a fresh process")
            diff = run_verifier(_VERIFY_DELETION, tmp, {"input_ids": input_ids, "sequence_ids": seq_ids,
                                                        "expected": expected, "expected_drop": expected_drop})
            if not diff <= tol:
                raise ExportVerificationError(
                    f"The checkpoint with deleted IDs differs from the input's exclude mode by up to {diff:.3g} "
                    f"(tolerance {tol:.3g} for logits up to {largest:.3g}); nothing was written."
                )
            steps.update()
    finally:
        steps.close()
    width = mlp_width(model)
    return ExportResult(
        out_dir=os.path.abspath(os.fspath(out)), checkpoint=os.path.abspath(checkpoint), kind="targeted deletion",
        parameters=sum(p.numel() for p in model.parameters()), size_bytes=directory_size(os.fspath(out)),
        mlp_width_before=width, mlp_width_after=width, max_abs_logit_diff=diff, logit_tolerance=tol,
        max_abs_logit=largest,
        extra={"deleted_ids": ids, "zeroed_pool_units": n_units,
               "pool_units": get_router(model).total_pool, "tokenizer_files": copied},
    )
