"""The end of a run: the model with sinks in ``output_dir/final``, then (rank 0) the model without sinks in
``output_dir/shipped`` and the before/after report.

The export and the report are ``memsinks.ablation.export_without_sinks`` and
``memsinks.ablation.removal_report``; this module chooses what they measure on (the run's
repeated rows, canaries and held-out rows, with their training IDs).
"""

from __future__ import annotations

import os

from memsinks_recipe.common import REPORT_FILE, SHIPPED_DIR, is_rank0, say
from memsinks_recipe.config import Recipe
from memsinks_recipe.data import PreparedData


def zero_stage(trainer) -> int | None:
    """The DeepSpeed ZeRO stage the Trainer runs under, or None without DeepSpeed."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return None if plugin is None else int(plugin.zero_stage)


def save_final(trainer, r: Recipe, data: PreparedData, final_dir: str, make_model) -> None:
    """Save the trained model with its sinks (LoRA merged) and the tokenizer to ``final_dir``; every rank calls it.

    ``trainer.save_model`` gathers DeepSpeed / FSDP shards and, through the sinks'
    ``state_dict`` hooks, writes the stock layout; ZeRO-3 bypasses the hooks, so its file is
    rewritten (``restore_stock_layout``, with a fresh model from ``make_model``). With LoRA the
    adapters are merged into the base model on rank 0 (``merge_and_unload`` keeps the sinks).
    """
    import memsinks
    from memsinks_recipe.model import restore_stock_layout, zero3_lifted

    args = trainer.args
    if r.lora.enabled:
        if args.process_index == 0:
            trainer.accelerator.unwrap_model(trainer.model).merge_and_unload().save_pretrained(final_dir)
    else:
        trainer.save_model(final_dir)
        if args.process_index == 0 and zero_stage(trainer) == 3:
            with zero3_lifted(args):
                restore_stock_layout(final_dir, make_model())
    if args.process_index == 0:
        data.tokenizer.save_pretrained(final_dir)
        if memsinks.has_sinks(trainer.model) and not os.path.isfile(os.path.join(final_dir, "sinks_config.json")):
            memsinks.get_sinks_config(trainer.model).save_pretrained(final_dir)
    trainer.accelerator.wait_for_everyone()


def export_and_report(r: Recipe, data: PreparedData, final_dir: str, output_dir: str) -> dict:
    """Rank 0: write the model without sinks to ``output_dir/shipped`` and, if configured, print the report.

    Returns ``{"export": ..., "report": ...}`` for the run summary; the report is also written
    to ``output_dir/ablation_report.json``.
    """
    from transformers import AutoModelForCausalLM

    from memsinks.ablation import export_without_sinks, load_sinks_checkpoint, removal_report
    from memsinks.ablation.report import ReportData, write_json
    from memsinks.ablation.sequences import SequenceSet

    shipped_dir = os.path.join(output_dir, SHIPPED_DIR)
    result = export_without_sinks(final_dir, shipped_dir, prune=r.export.prune, force=True, progress=False)
    say(f"exported the model without sinks to {shipped_dir}: {result.parameters:,} parameters, MLP width "
        f"{result.mlp_width_before} -> {result.mlp_width_after}; a process without memsinks loaded it and "
        f"reproduced the drop-mode logits (max |diff| {result.max_abs_logit_diff:.2g})")
    payload: dict = {"export": result.to_dict()}
    if not r.export.report:
        return payload
    need = r.probes.prefix_len + r.probes.suffix_len
    keep = [len(s) >= need for s in data.members]
    members = SequenceSet([list(s) for s in data.members], list(data.member_ids), "repeated rows").subset(keep)
    canaries = None
    if data.canaries:
        canaries = SequenceSet([list(s) for s in data.canaries], list(data.canary_ids), "canaries",
                               list(data.canary_texts))
    tok = data.tokenizer
    report_data = ReportData(
        heldout=data.heldout or None, members=members, canaries=canaries, tokenizer=tok,
        prefix_len=r.probes.prefix_len, suffix_len=r.probes.suffix_len, batch_size=r.probes.batch_size,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0, canary_samples=r.export.canary_samples)
    model = load_sinks_checkpoint(final_dir)
    shipped = AutoModelForCausalLM.from_pretrained(shipped_dir, use_safetensors=True).eval()
    report = removal_report(model, shipped, report_data, export_info=result.to_dict(), progress=False)
    if is_rank0():
        print(report.format_table(), flush=True)
    write_json(report.to_dict(), os.path.join(output_dir, REPORT_FILE))
    payload["report"] = report.to_dict()
    return payload
