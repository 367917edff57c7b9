"""``memsinks ablate`` (export without sinks, or targeted deletion, with the before/after report) and
``memsinks attribute`` (per-block attention short-circuit and sink drop).

Everything that can be refused is refused before the model is loaded or anything is written:
the output folder and files (``check_output_dir``, ``check_output_file``: never an input,
never an existing file or a foreign folder without ``--force``), the options, and then the
inputs themselves (token IDs outside the vocabulary, sequences too short for extraction, an
extraction longer than the model's context), so that no error can come after the export.
"""

from __future__ import annotations

import argparse
import os
import sys

from memsinks._cli_args import path_arg, positive_int
from memsinks._io import check_output_file
from memsinks.ablation.checkpoint import (
    check_checkpoint, load_plain_model, load_sinks_checkpoint, load_tokenizer, tokenizer_files,
)
from memsinks.ablation.export import ExportVerificationError
from memsinks.ablation.output_dir import check_output_dir
from memsinks.ablation.sequences import ID_KINDS, chunk_text_file, load_sequence_set


def add_parser(subparsers) -> None:
    """Register ``ablate`` and ``attribute``."""
    p = subparsers.add_parser(
        "ablate", help="write the model without sinks (or with chosen documents' sinks deleted) and report the change",
        description="Write CHECKPOINT without its sinks to --out as a plain transformers checkpoint (checked against "
                    "the drop mode in a process without memsinks), or, with --exclude-ids/--exclude-texts, a "
                    "checkpoint with only those documents' sinks zeroed; then report what changed.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", type=path_arg, help="directory saved from a model with sinks")
    p.add_argument("--out", required=True, metavar="DIR", type=path_arg,
                   help="output directory (created; must be new or empty, or an earlier export with --force)")
    _add_data_args(p)
    p.add_argument("--canaries", metavar="FILE", type=path_arg,
                   help="planted canaries as text (lines or .jsonl) for exposure; the secret is the last run of digits")
    p.add_argument("--canary-pattern", default=r"\d+", metavar="REGEX",
                   help="regex of a canary's secret (its last match); default: a run of digits")
    p.add_argument("--canary-samples", type=positive_int, default=10_000, metavar="N",
                   help="candidates sampled per canary when its secret space is too large to enumerate")
    p.add_argument("--json", metavar="REPORT", type=path_arg, help="also write the report as JSON (a new file)")
    p.add_argument("--sweep", action="store_true",
                   help="also drop 0/25/50/75/100%% of the sink pool and plot memorization against held-out loss")
    p.add_argument("--sweep-png", metavar="FILE", type=path_arg,
                   help="where --sweep writes its plot (default: beside --json or DIR)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--exclude-ids", metavar="IDS", help="targeted deletion: comma-separated sequence IDs")
    group.add_argument("--exclude-texts", metavar="FILE", type=path_arg,
                       help="targeted deletion: documents (text lines or .jsonl), hashed to IDs as training did "
                            "(needs --id-kind)")
    p.add_argument("--zero-split-units", action="store_true",
                   help="split placement: zero the sink units instead of pruning them (keeps the MLP width)")
    p.add_argument("--force", action="store_true",
                   help="replace an earlier memsinks export at --out (once the new model is checked) and existing "
                        "--json/--sweep-png files; never any other folder or an input")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_ablate)

    a = subparsers.add_parser(
        "attribute", help="per block: short-circuit attention, or drop that block's sinks, and measure memorization",
        description="For each transformer block, replace its attention by the identity (each position attends to "
                    "itself; Menta et al., NAACL 2025) and, separately, drop that block's sinks; report extraction "
                    "on --members and the loss on --eval-text.")
    a.add_argument("checkpoint", metavar="CHECKPOINT", type=path_arg, help="directory saved from a model with sinks")
    _add_data_args(a, required=True)
    a.add_argument("--json", metavar="OUT", type=path_arg, help="write the table as JSON (a new file)")
    a.add_argument("--png", metavar="OUT", type=path_arg, help="write the per-block plot as PNG (a new file)")
    a.add_argument("--mode", default="own", choices=("own", "mean", "drop"),
                   help="sinks mode while measuring (default own: memorization fully present)")
    a.add_argument("--force", action="store_true", help="replace existing --json/--png files")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.set_defaults(func=run_attribute)


def _add_data_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--eval-text", metavar="FILE", required=required, type=path_arg,
                   help="held-out text (plain text file)")
    p.add_argument("--members", metavar="FILE", required=required, type=path_arg,
                   help="sequences trained on (text lines, or .jsonl with text/input_ids and key/sequence_id)")
    p.add_argument("--id-kind", choices=ID_KINDS,
                   help="how training gave IDs: 'content' (hash of the tokens) or 'key' (hash of a document key)")
    p.add_argument("--wrap-eos", action="store_true",
                   help="frame each text with EOS tokens before hashing and measuring, as memsinks demo trains")
    p.add_argument("--prefix-len", type=positive_int, default=32,
                   help="extraction prompt length in tokens (default 32)")
    p.add_argument("--suffix-len", type=positive_int, default=32,
                   help="extraction target length in tokens (default 32)")
    p.add_argument("--window", type=positive_int, default=128, help="held-out window length in tokens (default 128)")
    p.add_argument("--max-eval-windows", type=positive_int, default=256, help="at most this many held-out windows")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow pytorch_model.bin weights (read with torch.load(weights_only=True))")


def _input_files(args) -> list[str]:
    """The run's input files (never written to, never inside --out)."""
    names = ("eval_text", "members", "canaries", "exclude_texts")
    return [getattr(args, n) for n in names if getattr(args, n, None) is not None]


def _check_output_files(args, outputs: dict[str, str | None], out_dir: str | None = None) -> None:
    """Refuse, before any work, output files that are inputs, lie in the checkpoint or --out, exist, or repeat."""
    inputs = _input_files(args)
    given = {option: path for option, path in outputs.items() if path is not None}
    for option, path in given.items():
        check_output_file(path, option, force=args.force, inputs=inputs, input_dirs=[args.checkpoint],
                          output_dirs=[out_dir])
    resolved = [os.path.realpath(p) for p in given.values()]
    if len(set(resolved)) < len(resolved):
        raise ValueError(f"{' and '.join(given)} name the same file {next(iter(given.values()))}; give each its own.")


def _sweep_png(args) -> str | None:
    if not args.sweep:
        return None
    if args.sweep_png:
        return args.sweep_png
    if args.json:
        return os.path.splitext(args.json)[0] + "-sweep.png"
    return os.path.abspath(args.out).rstrip(os.sep) + "-sweep.png"


def _tokenizer_for(args):
    """The checkpoint's tokenizer; None if it has none and nothing needs one (only .jsonl token IDs given)."""
    if tokenizer_files(args.checkpoint):
        return load_tokenizer(args.checkpoint)
    paths = [getattr(args, n, None) for n in ("members", "canaries", "exclude_texts")]
    if args.eval_text or getattr(args, "canaries", None) or any(p and not p.endswith(".jsonl") for p in paths):
        return load_tokenizer(args.checkpoint)  # raises, saying how to provide one
    return None


def _read_data(args, model, tokenizer):
    """Held-out windows, members and canaries from the command line, as a ``ReportData``, checked against the model."""
    from memsinks.ablation.report import ReportData
    from memsinks.probes._common import context_length

    heldout = None
    if args.eval_text is not None:
        window = args.window
        limit = context_length(model)
        if limit is not None and window > limit:
            window = limit
        heldout = chunk_text_file(args.eval_text, tokenizer, window, args.max_eval_windows)
    members = None
    if args.members is not None:
        members = load_sequence_set(args.members, tokenizer, args.id_kind, args.wrap_eos, what="--members")
    canaries = None
    if getattr(args, "canaries", None) is not None:
        canaries = load_sequence_set(args.canaries, tokenizer, args.id_kind, args.wrap_eos, what="--canaries")
    _check_inputs(model, args, members, canaries)
    pad = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
    extra = {}
    if canaries is not None:
        extra = dict(canary_pattern=args.canary_pattern, canary_samples=args.canary_samples)
    return ReportData(heldout=heldout, members=members, canaries=canaries, tokenizer=tokenizer,
                      prefix_len=args.prefix_len, suffix_len=args.suffix_len, batch_size=args.batch_size,
                      pad_token_id=pad, **extra)


def _check_inputs(model, args, members, canaries) -> None:
    """Everything the report will need of the inputs, checked before the export is written."""
    from memsinks.probes._common import check_fits_context, check_min_length, check_token_range, vocabulary_size

    vocab = vocabulary_size(model)
    for seqs in (members, canaries):
        if seqs is not None:
            check_token_range(seqs.sequences, vocab, seqs.where)
    if members is not None:
        check_fits_context(model, args.prefix_len, args.suffix_len)
        check_min_length(members.sequences, args.prefix_len + args.suffix_len, "--members sequences",
                         "Extraction needs --prefix-len + --suffix-len tokens: lower them or give longer sequences.",
                         members.where)


def run_ablate(args) -> int:
    from memsinks.ablation import deletion, export, report as report_mod
    from memsinks.ablation.deletion import parse_ids

    progress = not args.quiet
    if args.sweep and not (args.members and args.eval_text):
        raise ValueError("--sweep measures extraction on --members against the loss on --eval-text; give both.")
    if args.exclude_texts and args.id_kind is None:
        raise ValueError("--exclude-texts needs --id-kind content|key: how training turned documents into IDs.")
    ids = parse_ids(args.exclude_ids) if args.exclude_ids is not None else None  # "" is an error, not "no IDs"
    check_checkpoint(args.checkpoint, args.trust_pickle)
    check_output_dir(args.out, args.checkpoint, args.force, _input_files(args))
    png = _sweep_png(args)
    _check_output_files(args, {"--json": args.json, "--sweep-png": png}, out_dir=args.out)
    model = load_sinks_checkpoint(args.checkpoint, trust_pickle=args.trust_pickle)
    tokenizer = _tokenizer_for(args)
    data = _read_data(args, model, tokenizer)

    deleted_set = None
    if args.exclude_texts is not None:
        deleted_set = load_sequence_set(args.exclude_texts, tokenizer, args.id_kind, args.wrap_eos,
                                        need_tokens=False, what="--exclude-texts")
        ids = list(dict.fromkeys(deleted_set.ids))
        if deleted_set.sequences:
            _check_inputs(model, args, None, deleted_set)
        else:
            deleted_set = None
    try:
        if ids is not None:
            result = deletion.export_with_deletion(args.checkpoint, args.out, ids, force=args.force,
                                                   trust_pickle=args.trust_pickle, progress=progress)
        else:
            result = export.export_without_sinks(args.checkpoint, args.out, prune=not args.zero_split_units,
                                                 force=args.force, trust_pickle=args.trust_pickle, progress=progress)
    except ExportVerificationError as err:
        print(f"memsinks ablate: {err}", file=sys.stderr)
        return 1
    if ids is not None:
        after = load_sinks_checkpoint(args.out)
        rep = report_mod.deletion_report(model, after, ids, data, deleted=deleted_set, export_info=result.to_dict(),
                                         progress=progress)
    else:
        shipped = load_plain_model(args.out, use_safetensors=True)
        rep = report_mod.removal_report(model, shipped, data, export_info=result.to_dict(), progress=progress)
    print(rep.format_table())
    payload = rep.to_dict()

    if args.sweep:
        from memsinks._io import atomic_write
        from memsinks.ablation.sweep import sweep_sink_pool

        sweep = sweep_sink_pool(model, data.members.sequences, data.heldout, data.members.ids, data.heldout_ids(),
                                prefix_len=args.prefix_len, suffix_len=args.suffix_len, batch_size=args.batch_size,
                                pad_token_id=data.pad_token_id, progress=progress)
        atomic_write(png, sweep.plot, force=args.force, option="--sweep-png")
        print()
        print(sweep.format_table())
        print(f"sweep plot: {png}")
        payload["sweep"] = {**sweep.to_dict(), "png": os.path.abspath(png)}
    if args.json:
        report_mod.write_json(payload, args.json, force=args.force)
        print(f"report: {args.json}")
    print(f"{result.kind}: {result.out_dir}")
    return 0


def run_attribute(args) -> int:
    from memsinks._io import atomic_write
    from memsinks.ablation.attribution import attribute_blocks
    from memsinks.ablation.report import write_json

    check_checkpoint(args.checkpoint, args.trust_pickle)
    _check_output_files(args, {"--json": args.json, "--png": args.png})
    model = load_sinks_checkpoint(args.checkpoint, trust_pickle=args.trust_pickle)
    data = _read_data(args, model, _tokenizer_for(args))
    result = attribute_blocks(model, data.members.sequences, data.heldout, member_ids=data.members.ids,
                              heldout_ids=data.heldout_ids(), prefix_len=args.prefix_len, suffix_len=args.suffix_len,
                              mode=args.mode, batch_size=args.batch_size, pad_token_id=data.pad_token_id,
                              progress=not args.quiet)
    print(result.format_table())
    if args.png:
        atomic_write(args.png, result.plot, force=args.force, option="--png")
        print(f"plot: {args.png}")
    if args.json:
        write_json(result.to_dict(), args.json, force=args.force)
        print(f"table: {args.json}")
    return 0
