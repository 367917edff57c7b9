"""Scenario 2: fine-tune a pretrained model on records carrying personal data, once per arm and seed.

The base model is a small Llama pretrained here on the text (once per run, seed = the first
seed), or a real pretrained model given with ``--base-model``. Fine-tuning arms start from a
copy of the base, with the same step budget:

- ``standard`` (full fine-tune), ``dedup`` (each record once), ``goldfish``, ``dp`` (DP-SGD);
- ``memsinks``: append-placement sinks (new units whose output weights start at zero, so the
  base model's function is unchanged at the start), routed by each record's content ID,
  measured as ``memsinks_drop`` / ``memsinks_own`` / ``memsinks_mean``;
- ``lora_qk_r{r}`` / ``lora_vo_r{r}``: LoRA on the query/key or value/output projections at
  each rank r (Savine et al. 2025 report that v/o adapters memorize more than q or k).

The base model is the reference of the membership-inference and memorized-bits probes.
"""

from __future__ import annotations

import copy
import random
import tempfile
import time

import memsinks
from memsinks._causal_lm import load_causal_lm, load_tokenizer
from memsinks._memorization_corpus import Source, stream_rows, training_dataset
from memsinks._small_decoder import build_decoder
from memsinks.corpus import split_text_windows, train_tokenizer

from .data import build_scenario2, make_report
from .metrics import evaluate_scenario2
from .arms import SINK_MODES, privacy_available
from .training import steps_for, train_arm, train_scenario_arm


def training_arms(s) -> list[str]:
    """Every fine-tuning arm of the settings, or those ``s.arms`` names."""
    lora = [f"lora_{t}_r{r}" for t in s.lora_targets for r in s.lora_ranks]
    arms = ["standard", "dedup", "goldfish", "dp", "memsinks"] + lora
    if s.arms is not None:
        unknown = sorted(set(s.arms) - set(arms))
        if unknown:
            raise ValueError(f"Unknown scenario-2 arm(s) {unknown}; choose from {arms}.")
        arms = [a for a in arms if a in s.arms]
    return arms


def scenario2_tokenizer(text: str, vocab_size: int):
    """A BPE tokenizer of the pretraining text and of sample reports (drawn apart from every seed's records)."""
    rng = random.Random(987_654)
    reports = [make_report(rng) for _ in range(500)]
    return train_tokenizer([text, "\n".join(reports)], vocab_size=vocab_size, model_max_length=1 << 30)


def prepare_base(text: str, s, seed: int, echo=print) -> dict:
    """The base model, its tokenizer and held-out windows of the text (for ``general_loss``).

    Without ``s.base_model`` a small Llama is pretrained on the text's windows (all but the
    held-out ones) for ``s.pretrain_epochs``.
    """
    if s.base_model:
        model, tok = load_causal_lm(s.base_model), load_tokenizer(s.base_model)
        split = split_text_windows(text, tok, window=s.window, n_repeated=0, n_heldout=32, seed=seed)
        echo(f"scenario 2: base model {s.base_model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
             "parameters), not pretrained here")
        return {"model": model.eval(), "tokenizer": tok, "general_heldout": split.heldout, "pretrain_seconds": 0.0,
                "description": f"pretrained model from {s.base_model}"}
    tok = scenario2_tokenizer(text, s.vocab_size)
    split = split_text_windows(text, tok, window=s.window, n_repeated=0, n_heldout=64, seed=seed)
    model = build_decoder(s.model, len(tok), seed=seed, token_id=tok.pad_token_id)
    stream = [Source(split.train)]
    ds = training_dataset(stream, seed, with_ids=False)
    steps = steps_for(stream, s.pretrain_epochs, 32)
    with tempfile.TemporaryDirectory() as tmp:
        run = train_arm(model, tok, ds, output_dir=tmp, max_steps=steps, batch_size=32,
                        learning_rate=s.pretrain_learning_rate, seed=seed)
    n = sum(p.numel() for p in model.parameters())
    echo(f"scenario 2: pretrained a {n / 1e6:.2f}M-parameter Llama on {len(split.train)} windows in {run.seconds:.0f} s")
    return {"model": model.eval(), "tokenizer": tok, "general_heldout": split.heldout, "pretrain_seconds": run.seconds,
            "description": f"{s.model.n_layer}-layer {s.model.n_embd}-wide Llama pretrained here ({n / 1e6:.2f}M parameters)"}


def _lora(model, target: list[str], rank: int):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=target, task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def evaluate_base(base: dict, s, seed: int) -> dict:
    """The base model's metrics before any fine-tuning (seed ``seed``'s records): what each arm starts from."""
    data = build_scenario2(base["tokenizer"], base["general_heldout"], s, seed)
    metrics = evaluate_scenario2(base["model"], data, None, None, s, seed)
    return {k: metrics[k] for k in ("heldout_loss", "repeated_loss", "general_loss", "extraction_exact",
                                    "canary_exposure")}


def run_seed(base: dict, s, seed: int, *, echo=print) -> dict:
    """Fine-tune and measure every arm for one seed; same return shape as scenario 1's ``run_seed``."""
    tok = base["tokenizer"]
    data = build_scenario2(tok, base["general_heldout"], s, seed)
    standard, dedup = data.sources(), data.sources(dedup=True)
    std_rows, dedup_rows = stream_rows(standard), stream_rows(dedup)
    max_steps = steps_for(standard, s.epochs, s.batch_size)
    top = str(max(s.repeat_groups))
    out = {"arms": {}, "curves": {}, "skipped": {}, "data": {
        "background_records": len(data.background), "repeat_groups": {str(n): len(r) for n, r in data.groups.items()},
        "heldout_records": len(data.heldout), "training_rows": len(std_rows), "dedup_rows": len(dedup_rows),
        "max_steps": max_steps, "record_tokens_mean": sum(map(len, std_rows)) / len(std_rows),
    }}
    probe_records = data.groups[max(data.groups)][:s.curve_sequences]
    probe = {"repeated": [r.tokens for r in probe_records], "heldout": [r.tokens for r in data.heldout[:s.curve_sequences]]}
    for arm in training_arms(s):
        if arm == "dp" and not privacy_available():
            out["skipped"][arm] = "memsinks.make_private / memsinks.PrivacyConfig are not in this checkout"
            continue
        model = copy.deepcopy(base["model"]).train()
        with_sinks = arm == "memsinks"
        lr = s.learning_rate
        if with_sinks:
            memsinks.add_sinks(model, memsinks.SinksConfig(**{"routing_seed": seed, **s.sinks}))
        if arm.startswith("lora_"):
            _, target, rank = arm.split("_")
            model = _lora(model, s.lora_targets[target], int(rank[1:]))
            lr = s.lora_learning_rate
        run = train_scenario_arm(arm, model, tok, standard, dedup, probe, s, seed=seed, max_steps=max_steps,
                                 learning_rate=lr, with_sinks=with_sinks, warmup_steps=5)
        model.eval()
        start = time.perf_counter()
        for mode in (SINK_MODES if with_sinks else (None,)):
            name = f"memsinks_{mode}" if mode else arm
            metrics = evaluate_scenario2(model, data, mode, base["model"], s, seed)
            metrics.update(run.stats())
            out["arms"][name] = metrics
        out["curves"][arm] = {"train_loss": run.loss_curve(), "probe": run.curves}
        m = out["arms"]["memsinks_drop" if with_sinks else arm]
        echo(f"  [seed {seed}] {arm:<11} train {run.seconds:5.1f}s ({run.tokens_per_s:,.0f} tok/s), eval "
             f"{time.perf_counter() - start:4.1f}s: held-out {m['heldout_loss']:.3f}, x{top} records {m['repeated_loss']:.3f}, "
             f"phone extraction {m['extraction_exact']:.2f}, ref-MIA AUC {m['mia_auc']:.2f}")
    return out
