"""Post-hoc tools for a checkpoint with sinks: export without them, delete chosen documents' sinks,
and find where memorization lives.

    from memsinks.ablation import export_without_sinks, export_with_deletion, short_circuit_attention
    result = export_without_sinks("ckpt", "shipped")          # checked against drop mode, written atomically
    result = export_with_deletion("ckpt", "ckpt-deleted", ids) # those IDs' sink units zeroed
    with short_circuit_attention(model, 3): ...           # attention of block 3 is the identity

The command line is ``memsinks ablate`` and ``memsinks attribute`` (``memsinks.ablation.cli``).
"""

from memsinks.ablation.attribution import AttributionResult, attribute_blocks, short_circuit_attention
from memsinks.ablation.checkpoint import CheckpointMismatchError, UnsafeCheckpointError, load_sinks_checkpoint
from memsinks.ablation.deletion import delete_ids, export_with_deletion, ids_from_texts
from memsinks.ablation.export import ExportResult, ExportVerificationError, export_without_sinks
from memsinks.ablation.pool_units import scaled_pool_units
from memsinks.ablation.report import AblationReport, ReportData, deletion_report, removal_report
from memsinks.ablation.sweep import SweepResult, sweep_sink_pool

__all__ = [
    "export_without_sinks",
    "export_with_deletion",
    "delete_ids",
    "ids_from_texts",
    "load_sinks_checkpoint",
    "short_circuit_attention",
    "attribute_blocks",
    "sweep_sink_pool",
    "scaled_pool_units",
    "removal_report",
    "deletion_report",
    "ReportData",
    "AblationReport",
    "AttributionResult",
    "SweepResult",
    "ExportResult",
    "ExportVerificationError",
    "UnsafeCheckpointError",
    "CheckpointMismatchError",
]
