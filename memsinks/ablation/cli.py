"""``memsinks ablate`` (export without sinks, or targeted deletion, with the before/after report) and
``memsinks attribute`` (per-block attention short-circuit and sink drop)."""

from __future__ import annotations

import argparse
import os
import sys

from memsinks.ablation.checkpoint import check_checkpoint, load_sinks_checkpoint, load_tokenizer, tokenizer_files
from memsinks.ablation.export import ExportVerificationError, check_output_dir
from memsinks.ablation.sequences import ID_KINDS, chunk_text_file, load_sequence_set


def add_parser(subparsers) -> None:
    """Register ``ablate`` and ``attribute``."""
    p = subparsers.add_parser(
        "ablate", help="write the model without sinks (or with chosen documents' sinks deleted) and report the change",
        description="Write CHECKPOINT without its sinks to --out as a plain transformers checkpoint (checked against "
                    "the drop mode in a process without memsinks), or, with --exclude-ids/--exclude-texts, a "
                    "checkpoint with only those documents' sinks zeroed; then report what changed.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="directory saved from a model with sinks")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created; must be new or empty)")
    _add_data_args(p)
    p.add_argument("--canaries", metavar="FILE",
                   help="planted canaries as text (lines or .jsonl) for exposure; the secret is the last run of digits")
    p.add_argument("--canary-pattern", default=r"\d+", metavar="REGEX",
                   help="regex of a canary's secret (its last match); default: a run of digits")
    p.add_argument("--canary-samples", type=int, default=10_000, metavar="N",
                   help="candidates sampled per canary when its secret space is too large to enumerate")
    p.add_argument("--json", metavar="REPORT", help="also write the report as JSON")
    p.add_argument("--sweep", action="store_true",
                   help="also drop 0/25/50/75/100%% of the sink pool and plot memorization against held-out loss")
    p.add_argument("--sweep-png", metavar="FILE", help="where --sweep writes its plot (default: beside --json or DIR)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--exclude-ids", metavar="IDS", help="targeted deletion: comma-separated sequence IDs")
    group.add_argument("--exclude-texts", metavar="FILE",
                       help="targeted deletion: documents (text lines or .jsonl), hashed to IDs as training did "
                            "(needs --id-kind)")
    p.add_argument("--zero-split-units", action="store_true",
                   help="split placement: zero the sink units instead of pruning them (keeps the MLP width)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out once the new model is checked")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_ablate)

    a = subparsers.add_parser(
        "attribute", help="per block: short-circuit attention, or drop that block's sinks, and measure memorization",
        description="For each transformer block, replace its attention by the identity (each position attends to "
                    "itself; Menta et al., NAACL 2025) and, separately, drop that block's sinks; report extraction "
                    "on --members and the loss on --eval-text.")
    a.add_argument("checkpoint", metavar="CHECKPOINT", help="directory saved from a model with sinks")
    _add_data_args(a, required=True)
    a.add_argument("--json", metavar="OUT", help="write the table as JSON")
    a.add_argument("--png", metavar="OUT", help="write the per-block plot as PNG")
    a.add_argument("--mode", default="own", choices=("own", "mean", "drop"),
                   help="sinks mode while measuring (default own: memorization fully present)")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.set_defaults(func=run_attribute)


def _add_data_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--eval-text", metavar="FILE", required=required, help="held-out text (plain text file)")
    p.add_argument("--members", metavar="FILE", required=required,
                   help="sequences trained on (text lines, or .jsonl with text/input_ids and key/sequence_id)")
    p.add_argument("--id-kind", choices=ID_KINDS,
                   help="how training gave IDs: 'content' (hash of the tokens) or 'key' (hash of a document key)")
    p.add_argument("--wrap-eos", action="store_true",
                   help="frame each text with EOS tokens before hashing and measuring, as memsinks demo trains")
    p.add_argument("--prefix-len", type=int, default=32, help="extraction prompt length in tokens (default 32)")
    p.add_argument("--suffix-len", type=int, default=32, help="extraction target length in tokens (default 32)")
    p.add_argument("--window", type=int, default=128, help="held-out window length in tokens (default 128)")
    p.add_argument("--max-eval-windows", type=int, default=256, help="at most this many held-out windows")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow pytorch_model.bin weights (read with torch.load(weights_only=True))")


def _max_positions(model) -> int | None:
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(model.config, name, None)
        if isinstance(value, int):
            return value
    return None


def _tokenizer_for(args):
    """The checkpoint's tokenizer; None if it has none and nothing needs one (only .jsonl token IDs given)."""
    if tokenizer_files(args.checkpoint):
        return load_tokenizer(args.checkpoint)
    paths = [getattr(args, n, None) for n in ("members", "canaries", "exclude_texts")]
    if args.eval_text or any(p and not p.endswith(".jsonl") for p in paths):
        return load_tokenizer(args.checkpoint)  # raises, saying how to provide one
    return None


def _read_data(args, model, tokenizer):
    """Held-out windows, members and canaries from the command line, as a ``ReportData``."""
    from memsinks.ablation.report import ReportData

    heldout = None
    if args.eval_text:
        window = args.window
        limit = _max_positions(model)
        if limit is not None and window > limit:
            window = limit
        heldout = chunk_text_file(args.eval_text, tokenizer, window, args.max_eval_windows)
    members = load_sequence_set(args.members, tokenizer, args.id_kind, args.wrap_eos) if args.members else None
    canaries = None
    if getattr(args, "canaries", None):
        canaries = load_sequence_set(args.canaries, tokenizer, args.id_kind, args.wrap_eos)
    _check_long_enough(members, "--members", args)
    pad = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
    extra = {}
    if getattr(args, "canaries", None):
        extra = dict(canary_pattern=args.canary_pattern, canary_samples=args.canary_samples)
    return ReportData(heldout=heldout, members=members, canaries=canaries, tokenizer=tokenizer,
                      prefix_len=args.prefix_len, suffix_len=args.suffix_len, batch_size=args.batch_size,
                      pad_token_id=pad, **extra)


def _check_long_enough(seqs, option: str, args) -> None:
    """Extraction needs ``--prefix-len + --suffix-len`` tokens per sequence: say so before any work is done."""
    need = args.prefix_len + args.suffix_len
    short = [len(s) for s in (seqs.sequences if seqs is not None else []) if len(s) < need]
    if short:
        raise ValueError(
            f"{len(short)} of the {len(seqs)} {option} sequences are shorter than --prefix-len + --suffix-len = "
            f"{need} tokens (shortest: {min(short)}). Lower --prefix-len/--suffix-len or give longer sequences."
        )


def run_ablate(args) -> int:
    from memsinks.ablation import deletion, export, report as report_mod

    progress = not args.quiet
    check_checkpoint(args.checkpoint, args.trust_pickle)
    check_output_dir(args.out, args.checkpoint, args.force)
    if args.sweep and not (args.members and args.eval_text):
        raise ValueError("--sweep measures extraction on --members against the loss on --eval-text; give both.")
    if args.exclude_texts and args.id_kind is None:
        raise ValueError("--exclude-texts needs --id-kind content|key: how training turned documents into IDs.")
    model = load_sinks_checkpoint(args.checkpoint, trust_pickle=args.trust_pickle)
    tokenizer = _tokenizer_for(args)
    data = _read_data(args, model, tokenizer)

    deleted_set = None
    if args.exclude_ids or args.exclude_texts:
        if args.exclude_ids:
            ids = deletion.parse_ids(args.exclude_ids)
        else:
            deleted_set = load_sequence_set(args.exclude_texts, tokenizer, args.id_kind, args.wrap_eos,
                                            need_tokens=False)
            ids = list(dict.fromkeys(deleted_set.ids))
            if not deleted_set.sequences:
                deleted_set = None
        try:
            result = deletion.export_with_deletion(args.checkpoint, args.out, ids, force=args.force,
                                                   trust_pickle=args.trust_pickle, progress=progress)
        except ExportVerificationError as err:
            print(f"memsinks ablate: {err}", file=sys.stderr)
            return 1
        after = load_sinks_checkpoint(args.out)
        rep = report_mod.deletion_report(model, after, ids, data, deleted=deleted_set, export_info=result.to_dict(),
                                         progress=progress)
    else:
        try:
            result = export.export_without_sinks(args.checkpoint, args.out, prune=not args.zero_split_units,
                                                 force=args.force, trust_pickle=args.trust_pickle, progress=progress)
        except ExportVerificationError as err:
            print(f"memsinks ablate: {err}", file=sys.stderr)
            return 1
        from transformers import AutoModelForCausalLM

        shipped = AutoModelForCausalLM.from_pretrained(args.out, use_safetensors=True).eval()
        rep = report_mod.removal_report(model, shipped, data, export_info=result.to_dict(), progress=progress)
    print(rep.format_table())
    payload = rep.to_dict()

    if args.sweep:
        from memsinks.ablation.sweep import sweep_sink_pool

        sweep = sweep_sink_pool(model, data.members.sequences, data.heldout, data.members.ids, data.heldout_ids(),
                                prefix_len=args.prefix_len, suffix_len=args.suffix_len, batch_size=args.batch_size,
                                pad_token_id=data.pad_token_id, progress=progress)
        png = args.sweep_png or (os.path.splitext(args.json)[0] + "-sweep.png" if args.json
                                 else os.path.abspath(args.out).rstrip(os.sep) + "-sweep.png")
        sweep.plot(png)
        print()
        print(sweep.format_table())
        print(f"sweep plot: {png}")
        payload["sweep"] = {**sweep.to_dict(), "png": os.path.abspath(png)}
    if args.json:
        report_mod.write_json(payload, args.json)
        print(f"report: {args.json}")
    print(f"{result.kind}: {result.out_dir}")
    return 0


def run_attribute(args) -> int:
    from memsinks.ablation.attribution import attribute_blocks
    from memsinks.ablation.report import write_json

    model = load_sinks_checkpoint(args.checkpoint, trust_pickle=args.trust_pickle)
    data = _read_data(args, model, _tokenizer_for(args))
    result = attribute_blocks(model, data.members.sequences, data.heldout, member_ids=data.members.ids,
                              heldout_ids=data.heldout_ids(), prefix_len=args.prefix_len, suffix_len=args.suffix_len,
                              mode=args.mode, batch_size=args.batch_size, pad_token_id=data.pad_token_id,
                              progress=not args.quiet)
    print(result.format_table())
    if args.png:
        result.plot(args.png)
        print(f"plot: {args.png}")
    if args.json:
        write_json(result.to_dict(), args.json)
        print(f"table: {args.json}")
    return 0
