"""The training set as the private step sees it: its columns, and its rows grouped into privacy units."""

from __future__ import annotations

import inspect
import logging

import numpy as np
import torch

from memsinks.data import SEQUENCE_IDS
from memsinks.model import unwrap_model
from memsinks.privacy.inputs import LABEL_COLUMNS
from memsinks.privacy.sampling import PrivacyUnits

logger = logging.getLogger("memsinks")


def training_dataset(trainer):
    """The training set with the columns the stock Trainer would drop removed, keeping the ID column."""
    dataset = trainer.train_dataset
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        return dataset
    if not (trainer.args.remove_unused_columns and isinstance(dataset, datasets.Dataset)):
        return dataset
    inner = unwrap_model(trainer.model)
    keep = set(inspect.signature(inner.forward).parameters) | set(LABEL_COLUMNS)
    # the IDs are kept: the private step removes them itself when the forward does not take them
    keep |= set(trainer.args.label_names or []) | {SEQUENCE_IDS}
    drop = [c for c in dataset.column_names if c not in keep]
    return dataset.remove_columns(drop) if drop else dataset


def privacy_units(dataset, privacy_unit: str) -> PrivacyUnits:
    """The rows of ``dataset`` grouped into units: one per row, or one per distinct ``sequence_ids`` value."""
    if privacy_unit == "sequence_id":
        return PrivacyUnits.from_ids(_row_ids(dataset))
    _warn_on_repeated_ids(dataset)
    return PrivacyUnits.per_example(len(dataset))


def _row_ids(dataset) -> np.ndarray:
    """The ``sequence_ids`` value of every row (one per row; per-token lists must hold one ID)."""
    try:
        import datasets

        if isinstance(dataset, datasets.Dataset):
            if SEQUENCE_IDS not in dataset.column_names:
                raise KeyError(SEQUENCE_IDS)
            values = dataset.with_format(None)[SEQUENCE_IDS]
        else:
            values = [dataset[i][SEQUENCE_IDS] for i in range(len(dataset))]
    except KeyError:
        raise ValueError(
            f"privacy_unit='sequence_id' needs a '{SEQUENCE_IDS}' column naming each row's user or document: "
            "memsinks.assign_sequence_ids(dataset, from_column='user_id') adds it.") from None
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if isinstance(v, (list, tuple, np.ndarray, torch.Tensor)):
            distinct = {int(x) for x in v} - {0}
            if len(distinct) != 1:
                raise ValueError(f"Row {i} has per-token sequence IDs {sorted(distinct)[:5]}; user-level DP needs "
                                 "exactly one ID per row.")
            v = distinct.pop()
        if int(v) == 0:
            raise ValueError(
                f"Row {i} has sequence ID 0, which means 'no ID' (padding), so it would be merged with every other "
                "row without one into a single privacy unit. Give every row the ID of its user or document: "
                "memsinks.assign_sequence_ids(dataset, from_column='user_id') assigns nonzero IDs.")
        out[i] = int(v)
    return out


def _warn_on_repeated_ids(dataset) -> None:
    try:
        import datasets

        if isinstance(dataset, datasets.Dataset) and SEQUENCE_IDS in dataset.column_names:
            ids = dataset.with_format(None)[SEQUENCE_IDS]
            if ids and not isinstance(ids[0], (list, tuple)):
                repeated = len(ids) - len(set(ids))
                if repeated:
                    logger.warning(
                        "%d training rows repeat another row's sequence ID. Example-level DP bounds what each row "
                        "reveals, not what a text repeated k times reveals (about k times ε); "
                        "privacy_unit='sequence_id' protects each ID as one unit.", repeated)
    except ImportError:  # pragma: no cover
        pass
