"""The measurements of one trained arm, through ``memsinks.probes``.

Scenarios 1 and 3 (training from scratch): losses on the repeated and held-out rows (windows
of a text; in scenario 3 sequences of the second domain, plus held-out windows of the general
text), extraction (32-token prefix, 32-token greedy suffix) of the repeated rows, loss-based
membership inference (repeated vs held-out) and canary exposure. Scenario 2 (fine-tuning): per
repetition group of the personal-data records, extraction of the phone number from the
record before it, membership inference with the base model as reference, exposure of the
phone number and memorized bits over the base model.

A model with sinks is measured in one sinks mode at a time. In ``own`` mode every sequence,
trained or held out, is scored with its own content ID (``memsinks.content_id`` of its full
token list, the ID ``assign_sequence_ids`` gave it in training): held-out sequences get sinks
the model never trained, which is what a fresh sequence would get.
"""

from __future__ import annotations

import math

import numpy as np

import memsinks
from memsinks.probes import (
    MembershipResult, canary_exposure, extraction, generate_continuations, membership_inference, membership_scores,
    memorized_bits, sequence_losses,
)
from memsinks.probes.extraction import exact_match, longest_common_ngram, token_accuracy

from .data import DIGITS, digit_tokens


def _ids(sequences: list[list[int]], mode: str | None) -> list[int] | None:
    return [memsinks.content_id(s) for s in sequences] if mode == "own" else None


def memorization_metrics(model, tokenizer, repeated: list[list[int]], heldout: list[list[int]], canaries: list,
                         mode: str | None, s, seed: int) -> dict:
    """Losses, extraction and membership inference of ``repeated`` rows against ``heldout`` ones, and the
    exposure of ``canaries`` (``SecretRecord``s; none: no exposure fields), in sinks mode ``mode``
    (None: no sinks). Losses in nats/token; ``gap`` = held-out minus repeated loss."""
    pad = tokenizer.pad_token_id
    rep_ids, held_ids = _ids(repeated, mode), _ids(heldout, mode)
    with memsinks.sinks_mode(model, mode):
        rep_loss = float(np.mean(sequence_losses(model, repeated, rep_ids, pad_token_id=pad)))
        held_loss = float(np.mean(sequence_losses(model, heldout, held_ids, pad_token_id=pad)))
        ext = extraction(model, repeated, s.prefix_len, s.suffix_len, sequence_ids=rep_ids, pad_token_id=pad)
        ext_held = extraction(model, heldout, s.prefix_len, s.suffix_len, sequence_ids=held_ids, pad_token_id=pad)
        mia = membership_inference(model, repeated, heldout, member_ids=rep_ids, nonmember_ids=held_ids,
                                   tokenizer=tokenizer, pad_token_id=pad)
        exposures = []
        canary_losses = []
        if canaries:
            alphabet = digit_tokens(tokenizer)
        for c in canaries:
            cid = memsinks.content_id(c.tokens) if mode == "own" else None
            res = canary_exposure(model, None, c.prefix, c.secret, alphabet, suffix=c.suffix, sequence_id=cid,
                                  num_samples=s.exposure_samples, pad_token_id=pad, seed=seed)
            exposures.append(res.exposure)
            canary_losses.append(res.canary_nll)
    out = {
        "heldout_loss": held_loss,
        "repeated_loss": rep_loss,
        "gap": held_loss - rep_loss,
        "extraction_exact": ext.exact_match,
        "token_accuracy": ext.token_accuracy,
        "ngram_share": ext.ngram_share,
        "heldout_extraction_exact": ext_held.exact_match,
        "heldout_token_accuracy": ext_held.token_accuracy,
        "mia_auc": mia.auc["loss"],
        "mia_auc_zlib": mia.auc["zlib"],
        "mia_auc_minkprob": mia.auc["minkprob"],
    }
    if canaries:
        out.update({
            "canary_exposure": float(np.mean(exposures)),
            "canary_exposure_max_bits": float(math.log2(len(DIGITS)) * len(canaries[0].secret)),
            "canary_nll": float(np.mean(canary_losses)),
        })
    return out


def evaluate_scenario1(model, data, mode: str | None, s, seed: int) -> dict:
    """Metrics of a scenario-1 model in sinks mode ``mode`` (None: no sinks): the repeated windows against the
    held-out ones, and the canaries (see ``memorization_metrics``)."""
    c = data.corpus
    return memorization_metrics(model, c.tokenizer, c.repeated, c.heldout, data.canaries, mode, s, seed)


def evaluate_scenario3(model, data, mode: str | None, s, seed: int) -> dict:
    """Metrics of a scenario-3 model in sinks mode ``mode``: the repeated domain sequences against held-out ones
    of the domain (``domain_heldout_loss``; ``gap`` is between these two), the canaries, and the loss on
    held-out windows of the general text (``general_heldout_loss``)."""
    out = memorization_metrics(model, data.tokenizer, data.repeated_eval, data.domain_heldout, data.canaries, mode,
                               s, seed)
    out["domain_heldout_loss"] = out.pop("heldout_loss")
    with memsinks.sinks_mode(model, mode):
        out["general_heldout_loss"] = float(np.mean(sequence_losses(
            model, data.general_heldout, _ids(data.general_heldout, mode), pad_token_id=data.tokenizer.pad_token_id)))
    return out


def secret_extraction(model, records, mode: str | None, pad: int) -> dict:
    """Prompt with each record up to its secret and decode greedily as many tokens as the secret has.

    Returns per-record arrays ``exact`` (bool), ``accuracy`` and ``ngram_share`` (float).
    """
    lengths = {len(r.secret) for r in records}
    if len(lengths) != 1:
        raise ValueError(f"The records' secrets differ in length ({sorted(lengths)}); extraction compares fixed-length "
                         "suffixes, so give every record a secret of the same number of tokens.")
    n = lengths.pop()
    ids = _ids([r.tokens for r in records], mode)
    generated = generate_continuations(model, [r.prefix for r in records], n, sequence_ids=ids, pad_token_id=pad)
    target = np.array([r.secret for r in records], dtype=np.int64)
    return {
        "exact": exact_match(generated, target),
        "accuracy": token_accuracy(generated, target),
        "ngram_share": longest_common_ngram(generated, target) / n,
    }


def evaluate_scenario2(model, data, mode: str | None, reference_model, s, seed: int) -> dict:
    """Metrics of a fine-tuned model in sinks mode ``mode``; per repetition group under ``by_repeats``.

    The top-level fields repeat those of the group repeated most, plus the held-out record loss
    and its perplexity, and the loss on held-out windows of the pretraining text (``general_loss``).
    """
    tok = data.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    alphabet = digit_tokens(tok)
    held = [r.tokens for r in data.heldout]
    held_ids = _ids(held, mode)
    by_repeats = {}
    with memsinks.sinks_mode(model, mode):
        # the held-out records' scores are the same for every group: compute them once
        held_scores = membership_scores(model, held, reference_model, held_ids, tokenizer=tok, pad_token_id=pad)
        held_loss = float(-np.mean(held_scores["loss"]))
        general_loss = float(np.mean(sequence_losses(model, data.general_heldout, _ids(data.general_heldout, mode),
                                                     pad_token_id=pad)))
        for n, records in sorted(data.groups.items()):
            seqs = [r.tokens for r in records]
            ids = _ids(seqs, mode)
            rep_loss = float(np.mean(sequence_losses(model, seqs, ids, pad_token_id=pad)))
            ext = secret_extraction(model, records, mode, pad)
            member_scores = membership_scores(model, seqs, reference_model, ids, tokenizer=tok, pad_token_id=pad)
            mia = MembershipResult.from_scores(member_scores, held_scores)
            bits = memorized_bits(model, seqs, reference_model=reference_model, sequence_ids=ids, pad_token_id=pad)
            exposures = []
            for r in records[:s.exposure_records]:
                cid = memsinks.content_id(r.tokens) if mode == "own" else None
                exposures.append(canary_exposure(model, None, r.prefix, r.secret, alphabet, suffix=r.suffix,
                                                 sequence_id=cid, num_samples=s.exposure_samples, pad_token_id=pad,
                                                 seed=seed).exposure)
            by_repeats[str(n)] = {
                "repeated_loss": rep_loss,
                "gap": held_loss - rep_loss,
                "extraction_exact": float(np.mean(ext["exact"])),
                "token_accuracy": float(np.mean(ext["accuracy"])),
                "ngram_share": float(np.mean(ext["ngram_share"])),
                "mia_auc": mia.auc.get("reference", mia.auc["loss"]),
                "mia_auc_loss": mia.auc["loss"],
                "canary_exposure": float(np.mean(exposures)),
                "memorized_bits": bits.mean_bits,
            }
    top = dict(by_repeats[str(max(data.groups))])
    top.update({"heldout_loss": held_loss, "heldout_ppl": float(math.exp(held_loss)), "general_loss": general_loss})
    top["gap"] = held_loss - top["repeated_loss"]
    top["by_repeats"] = by_repeats
    return top
