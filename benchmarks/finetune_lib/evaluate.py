"""What one fine-tuned model learned and memorized, through ``memsinks.probes``.

Per repetition group: the mean loss on the secrets' tokens and greedy extraction of the
secret from the record before it, also per record in the group's order (what a mean hides,
e.g. whether the record the sinks' warm-up never showed is the one memorized). On held-out
records: the loss on their secrets (what no memorization gives) and on their other tokens
(the task learned). On general text: the loss the base model had and fine-tuning may have
destroyed. Exposure of numeric secrets among all digit strings of their length (skew-normal
estimate from sampled candidates).

A model with sinks is scored in one sinks mode at a time: ``drop`` (the shipped model),
``own`` (each record in its own sinks) or ``placebo`` (each record in the sinks of another
record of its group: what the sinks hold that is not the record's own). With people as members,
a group's scores are on each person's untrained record, in the person's sinks for ``own``; the
secret's loss and extraction on each person's first trained record are kept beside them
(``trained_secret_loss``, ``trained_extraction_exact``: the verbatim case).
"""

from __future__ import annotations

import numpy as np

import memsinks
from memsinks.probes import canary_exposure, generate_continuations, token_nlls

MODES_WITH_SINKS = ("drop", "own", "placebo")
DIGITS = "0123456789"


def _ids(data, records, mode, per_record=False):
    if mode == "own":
        return [data.record_id(r, per_record) for r in records]
    if mode == "placebo":
        ids = [data.record_id(r, per_record) for r in records]
        return ids[1:] + ids[:1]
    return None


def _per_record_means(nlls: list[np.ndarray], masks: list[list[int]]) -> list[float]:
    """Each record's mean NLL over the tokens its mask marks (nan where it marks none)."""
    return [_masked_mean([nll], [mask]) for nll, mask in zip(nlls, masks)]


def _masked_mean(nlls: list[np.ndarray], masks: list[list[int]]) -> float:
    """Mean NLL over the tokens a mask marks (the mask is per token; NLLs start at token 1)."""
    num = den = 0.0
    for nll, mask in zip(nlls, masks):
        m = np.asarray(mask[1:], dtype=float)
        num += float((nll * m).sum())
        den += float(m.sum())
    return num / den if den else float("nan")


def _extracted(model, records, ids, pad) -> list[bool]:
    """Whether greedy decoding after each record's text up to its secret reproduces the secret's tokens."""
    out = []
    by_length: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by_length.setdefault(r.last_secret - r.first_secret + 1, []).append(i)
    hits = [False] * len(records)
    for length, index in by_length.items():
        prefixes = [records[i].tokens[:records[i].first_secret] for i in index]
        chunk_ids = None if ids is None else [ids[i] for i in index]
        gen = generate_continuations(model, prefixes, length, sequence_ids=chunk_ids, pad_token_id=pad)
        for row, i in zip(gen, index):
            r = records[i]
            hits[i] = row.tolist() == r.tokens[r.first_secret:r.last_secret + 1]
    out.extend(hits)
    return out


def _exposures(model, data, records, ids, tokenizer, settings, seed) -> list[float]:
    alphabet = [tokenizer.convert_tokens_to_ids(d) for d in DIGITS]
    out = []
    for i, r in enumerate(records):
        secret = r.tokens[r.first_secret:r.last_secret + 1]
        if not r.record.numeric or not set(secret) <= set(alphabet) or len(out) >= settings.exposure_records:
            continue
        res = canary_exposure(model, None, r.tokens[:r.first_secret], secret, alphabet,
                              suffix=r.tokens[r.last_secret + 1:], sequence_id=None if ids is None else ids[i],
                              num_samples=settings.exposure_samples, pad_token_id=tokenizer.pad_token_id, seed=seed)
        out.append(res.exposure)
    return out


def _trained_firsts(data, repeats: int) -> list:
    """Each member person's first trained record (their records lie together in ``data.trained``)."""
    records = data.trained[repeats]
    return records[::repeats]


def evaluate(model, data, tokenizer, settings, mode: str | None, per_record_ids: bool = False) -> dict:
    """Metrics of ``model`` in sinks mode ``mode`` (None: a model without sinks). Losses in nats per token.
    ``per_record_ids``: the model was trained with an ID per record's text, so ``own`` uses those."""
    pad = tokenizer.pad_token_id
    out: dict = {"groups": {}}
    with memsinks.sinks_mode(model, "own" if mode == "placebo" else mode):
        for repeats, records in sorted(data.groups.items()):
            ids = _ids(data, records, mode, per_record_ids)
            nlls = token_nlls(model, [r.tokens for r in records], ids, pad_token_id=pad)
            hits = _extracted(model, records, ids, pad)
            secrets = [r.secret for r in records]
            group = out["groups"][str(repeats)] = {
                "secret_loss": _masked_mean(nlls, secrets),
                "secret_loss_per_record": _per_record_means(nlls, secrets),
                "extracted_per_record": [bool(h) for h in hits],
                "extraction_exact": float(np.mean(hits)),
                "extracted": int(sum(hits)),
            }
            if data.trained is not None:
                firsts = _trained_firsts(data, repeats)
                ids = _ids(data, firsts, mode, per_record_ids)
                nlls = token_nlls(model, [r.tokens for r in firsts], ids, pad_token_id=pad)
                group["trained_secret_loss"] = _masked_mean(nlls, [r.secret for r in firsts])
                group["trained_extraction_exact"] = float(np.mean(_extracted(model, firsts, ids, pad)))
        held = data.heldout
        ids = _ids(data, held, mode, per_record_ids)
        nlls = token_nlls(model, [r.tokens for r in held], ids, pad_token_id=pad)
        out["heldout_secret_loss"] = _masked_mean(nlls, [r.secret for r in held])
        out["heldout_task_loss"] = _masked_mean(nlls, [[1 - s for s in r.secret] for r in held])
        if mode in (None, "drop"):
            out["general_loss"] = float(np.mean(np.concatenate(token_nlls(model, data.general, pad_token_id=pad))))
        head = data.groups[settings.headline_repeats]
        exposures = _exposures(model, data, head, _ids(data, head, mode, per_record_ids), tokenizer, settings,
                               data.seed)
        out["exposure_bits"] = float(np.mean(exposures)) if exposures else float("nan")
    head = out["groups"][str(settings.headline_repeats)]
    out["secret_loss"] = head["secret_loss"]
    out["extraction_exact"] = head["extraction_exact"]
    out["gap"] = out["heldout_secret_loss"] - head["secret_loss"]
    if "trained_secret_loss" in head:
        out["trained_secret_loss"] = head["trained_secret_loss"]
        out["trained_extraction_exact"] = head["trained_extraction_exact"]
    return out
