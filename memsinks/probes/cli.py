"""``memsinks probe``: run the memorization probes on a saved model and print a table (and JSON).

    memsinks probe MODEL_DIR --members FILE --nonmembers FILE [--reference DIR] [--canaries FILE] [--json OUT]
                   [--attack dsp [--attack-pairs FILE | --attack-split 0.5]]

MODEL_DIR is a memsinks checkpoint (with ``sinks_config.json``; loaded with
``memsinks.from_pretrained``) or a plain transformers model directory; its tokenizer is loaded
from the same directory. Member, non-member and canary files hold one sequence per line as
plain text, or JSON lines with a ``text`` field (see ``memsinks.probes.inputs``). The output
holds numbers only, never the probed text. ``--attack dsp`` adds the dynamic soft-prompt attack
(``memsinks.probes.dsp``): trained on the attacker's pairs, evaluated on the other members.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

from memsinks._cli_args import nonnegative_int, path_arg, positive_int
from memsinks.config import EVAL_MODES, SINKS_CONFIG_NAME


def _load(directory: str, device: str, what: str):
    """(model, tokenizer or None) from a memsinks checkpoint or a plain transformers directory, loaded strictly."""
    import memsinks
    from memsinks.ablation.checkpoint import load_plain_model, load_tokenizer, tokenizer_files

    if not os.path.isdir(directory):
        raise FileNotFoundError(f"The {what} directory {directory} does not exist.")
    if os.path.isfile(os.path.join(directory, SINKS_CONFIG_NAME)):
        model = memsinks.from_pretrained(directory).to(device)
    else:
        model = load_plain_model(directory, device=device)
    tokenizer = load_tokenizer(directory) if tokenizer_files(directory) else None
    return model, tokenizer


def _check_inputs(args, model, members, nonmembers) -> None:
    """Token IDs in the model's vocabulary, and sequences long enough, each named by file and line, before any probe."""
    from memsinks.probes._common import check_fits_context, check_min_length, check_token_range, vocabulary_size

    vocab = vocabulary_size(model)
    for probe_set, what in ((members, "members"), (nonmembers, "non-members")):
        where = functools.partial(probe_set.where, what=what)
        check_token_range(probe_set.tokens, vocab, where)
        check_min_length(probe_set.tokens, 2, what, "A probed sequence needs at least 2 tokens (the first is context).",
                         where)
    check_fits_context(model, args.prefix_len, args.suffix_len)
    check_min_length(members.tokens, args.prefix_len + args.suffix_len, "members",
                     "Extraction needs --prefix-len + --suffix-len tokens: lower them or give longer members.",
                     functools.partial(members.where, what="members"))


def run_probes(args, echo=print) -> dict:
    """Load, probe, print the table; returns the JSON-ready results."""
    import torch
    from tqdm.auto import tqdm

    import memsinks
    from memsinks.probes import (
        Canary, ProbeSet, canary_exposure, extraction, membership_inference, memorized_bits, sink_gap,
    )
    from memsinks.probes._common import check_same_tokenizer, resolve_pad_token_id, sinks_mode_in_force
    from memsinks.probes.inputs import read_records

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = _load(args.model_dir, device, "model")
    try:
        members = ProbeSet.from_file(args.members, tokenizer, "members")
        nonmembers = ProbeSet.from_file(args.nonmembers, tokenizer, "non-members")
    except (TypeError, KeyError) as err:  # malformed records: report them as bad input
        raise ValueError(str(err)) from err
    _check_inputs(args, model, members, nonmembers)
    dsp_sets = _dsp_sets(args, model, members, tokenizer) if args.attack == "dsp" else None
    canaries = None
    if args.canaries is not None:
        if tokenizer is None:
            raise ValueError(f"--canaries are texts scored through the tokenizer, and {args.model_dir} has none; save "
                             "it beside the model (tokenizer.save_pretrained(MODEL_DIR)).")
        canaries = []
        for line, record in read_records(args.canaries, "canaries"):
            if not isinstance(record.get("text"), str):
                raise ValueError(f"{args.canaries}:{line}: canaries are texts (a 'text' field), so the secret can be "
                                 "located.")
            try:
                canaries.append(Canary.from_text(record["text"], args.canary_pattern, args.canary_alphabet))
            except ValueError as err:
                raise ValueError(f"{args.canaries}:{line}: {err}") from None
    reference = None
    if args.reference:
        reference, ref_tokenizer = _load(args.reference, device, "reference model")
        if ref_tokenizer is not None:
            check_same_tokenizer(tokenizer, ref_tokenizer)
    with_sinks = memsinks.has_sinks(model)
    if args.sinks_mode and not with_sinks:
        raise ValueError(f"--sinks-mode {args.sinks_mode} needs a model with sinks; {args.model_dir} has none.")
    in_mode = memsinks.sinks_mode(model, args.sinks_mode)
    pad = resolve_pad_token_id(model, getattr(tokenizer, "pad_token_id", None))
    progress = not args.no_progress
    stages = ["extraction"] + (["DSP attack"] if args.attack == "dsp" else []) \
        + ["membership inference", "memorized bits"] + (["sink gap"] if with_sinks else []) \
        + (["canaries"] if canaries else [])
    results: dict = {
        "model": os.path.abspath(args.model_dir),
        "reference": os.path.abspath(args.reference) if args.reference else None,
        "n_members": len(members), "n_nonmembers": len(nonmembers),
        "sinks": with_sinks,
    }
    bar = tqdm(total=len(stages), desc="memsinks probe", unit="probe", disable=not progress)
    try:
        with in_mode:
            results["sinks_mode"] = sinks_mode_in_force(model)
            bar.set_postfix_str(stages[0])
            results["extraction"] = extraction(
                model, members.tokens, args.prefix_len, args.suffix_len, sequence_ids=members.ids,
                batch_size=args.batch_size, pad_token_id=pad, num_samples=args.num_samples, top_k=args.top_k,
                progress=progress,
            ).to_dict()
            bar.update()
            if args.attack == "dsp":
                bar.set_postfix_str("DSP attack")
                results["dsp"] = _run_dsp(model, *dsp_sets, args, progress)
                bar.update()
            bar.set_postfix_str("membership inference")
            results["membership"] = membership_inference(
                model, members.tokens, nonmembers.tokens, reference_model=reference, member_ids=members.ids,
                nonmember_ids=nonmembers.ids, batch_size=args.batch_size, tokenizer=tokenizer, progress=progress,
            ).to_dict()
            bar.update()
            bar.set_postfix_str("memorized bits")
            results["memorized_bits"] = memorized_bits(
                model, members.tokens, reference_model=reference, sequence_ids=members.ids,
                batch_size=args.batch_size, progress=progress,
            ).to_dict()
            bar.update()
            if canaries:
                bar.set_postfix_str("canaries")
                results["canaries"] = [
                    canary_exposure(model, tokenizer, c.prefix, c.secret, c.alphabet, suffix=c.suffix,
                                    max_enumerate=args.max_enumerate, num_samples=args.canary_samples,
                                    batch_size=max(args.batch_size, 64), pad_token_id=pad, progress=progress).to_dict()
                    for c in canaries
                ]
                bar.update()
        if with_sinks:
            bar.set_postfix_str("sink gap")
            results["sink_gap"] = sink_gap(
                model, members.tokens, nonmembers.tokens, member_ids=members.ids_or_content(),
                heldout_ids=nonmembers.ids, prefix_len=args.prefix_len, suffix_len=args.suffix_len,
                batch_size=args.batch_size, pad_token_id=pad, progress=progress,
            ).to_dict()
            results["sink_gap"]["member_ids"] = "given" if members.ids is not None else "content"
            bar.update()
    finally:
        bar.close()
    echo(format_table(results, args))
    return results


def _dsp_sets(args, model, members, tokenizer):
    """(attacker pairs, evaluated members) of the DSP attack: ``--attack-pairs``, else the first ``--attack-split``
    share of the members; the two sets are disjoint by ID."""
    from memsinks.probes import ProbeSet

    if args.attack_pairs is not None:
        attack = ProbeSet.from_file(args.attack_pairs, tokenizer, "attack pairs")
        _check_inputs(args, model, attack, attack)
        return attack, members
    if not 0 < args.attack_split < 1:
        raise ValueError(f"--attack-split must be in (0, 1); got {args.attack_split}.")
    n_attack = int(round(args.attack_split * len(members)))
    if n_attack < 1 or n_attack >= len(members):
        raise ValueError(f"--attack-split {args.attack_split} of {len(members)} members leaves no attack or no "
                         "evaluation sequences; give more members or --attack-pairs FILE.")
    return members.subset(range(n_attack)), members.subset(range(n_attack, len(members)))


def _run_dsp(model, attack, evals, args, progress: bool) -> dict:
    """The DSP attack: trained on the attacker's pairs, evaluated on ``evals``."""
    from memsinks.probes import DSPConfig, dsp_extraction

    config = DSPConfig(n_prompts=args.dsp_prompts, steps=args.dsp_steps, lr=args.dsp_lr,
                       prompt_positions=args.dsp_prompt_positions)
    out = dsp_extraction(model, attack.tokens, evals.tokens, args.prefix_len, args.suffix_len, attack_ids=attack.ids,
                         eval_ids=evals.ids, config=config, batch_size=args.batch_size, progress=progress).to_dict()
    out["attack_pairs"] = os.path.abspath(args.attack_pairs) if args.attack_pairs else f"members[:{len(attack)}]"
    return out


def format_table(results: dict, args) -> str:
    def f(x, digits=3):
        return "n/a" if x is None else f"{x:.{digits}f}"

    rows: list[tuple[str, str]] = []
    ext = results["extraction"]
    rows.append((f"extraction exact match ({ext['prefix_len']}+{ext['suffix_len']} tokens)",
                 f"{f(ext['exact_match'])}  ({ext['n_extracted']} of {ext['n_sequences']})"))
    rows.append(("extraction token accuracy", f(ext["token_accuracy"])))
    rows.append(("extraction longest common n-gram share", f(ext["ngram_share"])))
    dsp = results.get("dsp")
    if dsp is not None:
        rows.append((f"DSP attack ({dsp['n_attack']} attacker pairs, {dsp['n_eval']} evaluated, "
                     f"m={dsp['config']['n_prompts']})", "exact match / token accuracy"))
        kinds = (("no_prompt", "no prompt"), ("static", "static soft prompt"), ("dsp", "dynamic soft prompt"))
        for kind, label in kinds:
            rows.append((f"  {label}", f"{f(dsp[kind]['exact_match'])} / {f(dsp[kind]['token_accuracy'])}"))
    mia = results["membership"]
    labels = {"loss": "loss", "zlib": "zlib ratio", "minkprob": "min-k% prob (k=20%)", "reference": "reference ratio"}
    for name, auc in mia["auc"].items():
        rows.append((f"MIA ROC AUC, {labels[name]}", f(auc)))
    for name in mia["auc"]:
        rows.append((f"MIA TPR at 1% / 0.1% FPR, {labels[name]}",
                     f"{f(mia['tpr_at_fpr_1pct'][name])} / {f(mia['tpr_at_fpr_0_1pct'][name])}"))
    bits = results["memorized_bits"]
    rows.append((f"memorized bits in members (vs {bits['reference']})",
                 f"{bits['total_bits']:.1f} total, {bits['mean_bits']:.1f} per sequence"))
    gap = results.get("sink_gap")
    if gap is not None:
        closed = f(gap["closed"]) if gap["closed"] is not None else "n/a (held-out loss is not above the members')"
        rows.append(("sink gap closed by dropping sinks", closed))
        rows.append(("  member loss, sinks own / dropped", f"{f(gap['loss_own'])} / {f(gap['loss_drop'])}"))
        rows.append(("  held-out loss, sinks own / dropped",
                     f"{f(gap['heldout_loss_own'])} / {f(gap['heldout_loss_drop'])}"))
        rows.append(("  member extraction, sinks own / dropped",
                     f"{f(gap['extraction_own'])} / {f(gap['extraction_drop'])}"))
    for i, c in enumerate(results.get("canaries") or []):
        how = f"rank {c['rank']}" if c["rank"] is not None else "skew-normal estimate"
        rows.append((f"canary {i} exposure (bits)", f"{c['exposure']:.2f} of {c['log2_space_size']:.2f}  ({how})"))
    width = max(len(r[0]) for r in rows)
    mode = f", sinks mode {results['sinks_mode']}" if results["sinks"] else ""
    head = [
        f"memsinks probe {results['model']}{mode}",
        f"{results['n_members']} members, {results['n_nonmembers']} non-members"
        + (f", reference {results['reference']}" if results["reference"] else ""),
        "",
        f"{'probe':<{width}}  value",
        f"{'-' * width}  {'-' * 24}",
    ]
    notes = []
    if gap is not None and gap.get("member_ids") == "content":
        notes.append("The sink gap routes members by content IDs of their tokens here; they equal the training IDs "
                     "only if training tokenized the text the same way (else give sequence_id/doc_id in a .jsonl).")
    if mia["n_nonmembers"] < 1000:
        notes.append(f"TPR at 0.1% FPR needs over 1000 non-members to resolve; with {mia['n_nonmembers']} it is the "
                     "share of members scoring above every non-member.")
    return "\n".join(head + [f"{a:<{width}}  {b}" for a, b in rows] + [""] + notes)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "probe", help="run the memorization probes on a saved model",
        description="Extraction, membership inference, memorized bits, canary exposure and (with sinks) the sink gap "
                    "of a saved model on member and non-member files (one sequence per line, or .jsonl with 'text').",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", type=path_arg,
                   help="a memsinks checkpoint or a transformers model directory")
    p.add_argument("--members", required=True, metavar="FILE", type=path_arg,
                   help="training sequences (.txt or .jsonl)")
    p.add_argument("--nonmembers", required=True, metavar="FILE", type=path_arg, help="sequences never trained on")
    p.add_argument("--reference", metavar="DIR", type=path_arg,
                   help="reference model with the same tokenizer (e.g. the base model)")
    p.add_argument("--canaries", metavar="FILE", type=path_arg,
                   help="canary texts, one per line; the secret is the last match of --canary-pattern")
    p.add_argument("--canary-pattern", default=r"\d+", help="regular expression of the secret (default: digits)")
    p.add_argument("--canary-alphabet", default="0123456789", help="characters each secret position draws from")
    p.add_argument("--max-enumerate", type=positive_int, default=100_000,
                   help="rank exactly up to this many candidates")
    p.add_argument("--canary-samples", type=positive_int, default=10_000,
                   help="candidates sampled for the skew-normal fit")
    p.add_argument("--prefix-len", type=positive_int, default=32,
                   help="extraction prompt length in tokens (default 32)")
    p.add_argument("--suffix-len", type=positive_int, default=32, help="extraction continuation length (default 32)")
    p.add_argument("--num-samples", type=nonnegative_int, default=0,
                   help="top-k samples per prefix (default 0: greedy)")
    p.add_argument("--top-k", type=positive_int, default=40)
    p.add_argument("--attack", choices=("greedy", "dsp"), default="greedy",
                   help="dsp: also run the dynamic soft-prompt attack with no-prompt and static-prompt baselines")
    p.add_argument("--attack-pairs", metavar="FILE", type=path_arg,
                   help="training sequences the DSP attacker knows (default: the first --attack-split share of the "
                        "members)")
    p.add_argument("--attack-split", type=float, default=0.5, help="share of members given to the DSP attacker")
    p.add_argument("--dsp-prompts", type=positive_int, default=8, help="soft-prompt vectors m (default 8)")
    p.add_argument("--dsp-steps", type=positive_int, default=300, help="training steps of each prompt (default 300)")
    p.add_argument("--dsp-lr", type=float, default=1e-3, help="learning rate of the prompts (default 1e-3)")
    p.add_argument("--dsp-prompt-positions", choices=("shifted", "overlap"), default="shifted",
                   help="shifted: the prefix follows the prompt's positions (the paper's attack); overlap: the prefix "
                        "keeps positions from 0, as in a model trained on windows that start at 0")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--sinks-mode", choices=EVAL_MODES, help="sinks mode for the probes other than the sink gap "
                                                            "(default: the checkpoint's eval mode)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--json", metavar="OUT", type=path_arg, help="also write the numbers as JSON (a new file)")
    p.add_argument("--force", action="store_true", help="replace an existing --json file (never an input)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from memsinks._io import check_output_file, write_json

    if args.json is not None:  # refused before any work: never an input, never an existing file without --force
        inputs = [args.members, args.nonmembers, args.canaries, args.attack_pairs]
        check_output_file(args.json, "--json", force=args.force, inputs=inputs,
                          input_dirs=[args.model_dir, args.reference])
    results = run_probes(args)
    if args.json is not None:
        write_json(args.json, results, force=args.force)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
