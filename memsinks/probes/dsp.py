"""Dynamic soft-prompt (DSP) extraction: a learned, prefix-dependent prompt that unlocks memorized suffixes.

Wang et al. 2024, "Unlocking Memorization in Large Language Models with Dynamic Soft
Prompting" (arXiv 2409.13853). Greedy prefix-to-suffix extraction underestimates what a model
has memorized; an attacker who knows some training (prefix, suffix) pairs can train a small
*generator* that reads a prefix and emits ``m`` soft-prompt vectors; prepended to the prefix's
token embeddings, they steer the frozen target towards the memorized suffix. The generator's
transformer blocks start as the identity map (output projections zero), so training starts from
a static soft prompt and moves away from it smoothly, which the paper credits for stable training.

``dsp_extraction`` trains, on the attacker's pairs, a static soft prompt (``m`` constant
vectors) and the DSP generator with the same objective, steps and learning rate (the generator
starts from the trained static prompt: its identity blocks output the queries, set to that
prompt, so DSP begins where the static baseline ended), then decodes greedily on disjoint
evaluation sequences and reports three ``ExtractionResult``s from one run: no prompt (the plain
greedy probe), static prompt, DSP. The target model is never updated. The generator, the
training loop and the prompted decoder are in ``memsinks.probes.soft_prompts``.

Shapes: B batch, P prefix length, S suffix length, m prompt length, d the target's hidden size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from memsinks.data import content_id
from memsinks.unwrap import unwrap_model
from memsinks.probes._common import (
    as_token_lists, batch_starts, check_min_length, device_of, resolve_sequence_ids,
)
from memsinks.probes.extraction import (
    ExtractionResult, exact_match, extraction, longest_common_ngram, token_accuracy,
)
from memsinks.probes.soft_prompts import (
    PROMPT_POSITIONS, AttackPairs, PromptGenerator, SuffixLoss, frozen, generator_heads, greedy_with_prompt,
    initial_prompt, train_prompt,
)


@dataclass
class DSPConfig:
    """How the attacker's prompts are built and trained (static prompt and DSP alike).

    ``n_prompts``: m, soft-prompt vectors prepended to the prefix. ``generator_layers`` /
    ``generator_heads``: the generator's pre-LN transformer blocks at the target's width
    (heads: the largest of 8, 4, 2, 1 dividing it when None). ``steps`` optimizer steps of
    ``batch_size`` attack pairs, AdamW at ``lr``; the last ``validation_share`` of the attack
    pairs is held out and the prompt with the lowest validation loss (checked every
    ``eval_every`` steps) is kept. ``max_prefix_len``: size of the generator's position table.

    ``prompt_positions``: ``"shifted"`` (the paper's setting) gives the prompt positions
    0..m-1 and moves the prefix to m..m+P-1; ``"overlap"`` gives the prompt positions 0..m-1
    and leaves the prefix and suffix at 0..P+S-1, where a model trained on windows that start at
    position 0 saw them. Against such a model a shifted prompt can hide what it memorized; an
    attacker with the white-box access DSP needs chooses the position IDs, so try both.
    """

    n_prompts: int = 8
    generator_layers: int = 2
    generator_heads: int | None = None
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_prefix_len: int = 512
    validation_share: float = 0.2
    eval_every: int = 25
    seed: int = 0
    prompt_positions: str = "shifted"

    def __post_init__(self):
        if self.prompt_positions not in PROMPT_POSITIONS:
            raise ValueError(f"DSPConfig.prompt_positions must be one of {PROMPT_POSITIONS}; got "
                             f"{self.prompt_positions!r}.")
        if not 0 <= self.validation_share < 1:
            raise ValueError(f"DSPConfig.validation_share must be in [0, 1); got {self.validation_share}.")
        for name in ("n_prompts", "generator_layers", "steps", "batch_size", "max_prefix_len", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DSPConfig.{name} must be >= 1; got {getattr(self, name)}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"DSPConfig.lr must be a positive number; got {self.lr}.")


@dataclass
class DSPResult:
    """No-prompt, static-prompt and DSP extraction on the same evaluation sequences.

    ``n_attack`` / ``n_eval``: attacker-known training pairs and evaluated sequences (disjoint
    by pair ID). ``train_loss``: per prompt kind, the mean suffix NLL (nats/token) of the
    attacker's training and validation pairs for the kept prompt, their counts and the kept step.
    """

    no_prompt: ExtractionResult
    static: ExtractionResult
    dsp: ExtractionResult
    n_attack: int
    n_eval: int
    config: DSPConfig
    train_loss: dict = field(default_factory=dict)
    attack_ids: list = field(default_factory=list, repr=False)
    eval_ids: list = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {
            "no_prompt": self.no_prompt.to_dict(),
            "static": self.static.to_dict(),
            "dsp": self.dsp.to_dict(),
            "n_attack": self.n_attack,
            "n_eval": self.n_eval,
            "train_loss": dict(self.train_loss),
            "config": asdict(self.config),
        }


def pair_ids(sequences: Sequence[Sequence[int]], prefix_len: int, suffix_len: int,
             sequence_ids: Sequence[int] | None = None) -> list[int]:
    """An ID per (prefix, suffix) pair: the given sequence ID, else ``content_id`` of the pair's tokens."""
    if sequence_ids is not None:
        return [int(i) for i in sequence_ids]
    return [content_id(list(s[:prefix_len + suffix_len])) for s in sequences]


def check_disjoint(attack_ids: Sequence[int], eval_ids: Sequence[int]) -> None:
    """Raise if an attacker training pair is also an evaluation pair (the attack would be scored on its own data)."""
    shared = set(attack_ids) & set(eval_ids)
    if shared:
        raise ValueError(
            f"{len(shared)} of the {len(set(eval_ids))} evaluation pairs are also among the attacker's training pairs; "
            "the attack must be evaluated on sequences it was not trained on. Split the data into disjoint sets."
        )


def _score(generated: np.ndarray, target: np.ndarray, prefix_len: int, suffix_len: int) -> ExtractionResult:
    per_example = {
        "exact_match": exact_match(generated, target),
        "token_accuracy": token_accuracy(generated, target),
        "ngram_share": longest_common_ngram(generated, target) / suffix_len,
        "generated": generated,
    }
    return ExtractionResult.from_per_example(per_example, prefix_len, suffix_len)


def _decode(model, make_prompt, sequences, prefix_len, suffix_len, ids, batch_size, progress, desc,
            prompt_positions: str = "shifted"):
    out = np.zeros((len(sequences), suffix_len), dtype=np.int64)
    device = device_of(model)
    with torch.no_grad():
        for s in batch_starts(len(sequences), batch_size, progress, desc):
            chunk = [q[:prefix_len] for q in sequences[s:s + batch_size]]
            prompt = make_prompt(torch.tensor(chunk, dtype=torch.long, device=device))
            out[s:s + len(chunk)] = greedy_with_prompt(
                model, prompt, chunk, suffix_len, None if ids is None else ids[s:s + batch_size], prompt_positions)
    return out


def dsp_extraction(
    model: nn.Module,
    attack_sequences: Sequence[Sequence[int]],
    eval_sequences: Sequence[Sequence[int]],
    prefix_len: int = 32,
    suffix_len: int = 32,
    attack_ids: Sequence[int] | None = None,
    eval_ids: Sequence[int] | None = None,
    config: DSPConfig | None = None,
    batch_size: int = 32,
    *,
    progress: bool = False,
) -> DSPResult:
    """Train a static soft prompt and a DSP generator on ``attack_sequences``; extract from ``eval_sequences``.

    The model is attacked as it is (with sinks: in the mode in force, ``drop`` for a shipped
    model) and stays frozen: its parameters and ``requires_grad`` flags are as before.

    Args:
        attack_sequences: training sequences the attacker knows, each at least
            ``prefix_len + suffix_len`` tokens; the first ``prefix_len`` are the prefix.
        eval_sequences: other training sequences to extract from (same length rule).
        attack_ids / eval_ids: their training sequence IDs, if known. They route a model with
            sinks in ``own`` mode and identify pairs for the disjointness check (default:
            content IDs of each pair's tokens). Overlapping pairs raise a ValueError.
    Returns:
        ``DSPResult`` with ``no_prompt``, ``static`` and ``dsp`` extraction results.
    """
    config = config or DSPConfig()
    if prefix_len < 1 or suffix_len < 1:
        raise ValueError(f"prefix_len and suffix_len must be >= 1; got {prefix_len} and {suffix_len}.")
    attack = as_token_lists(attack_sequences, "attack_sequences")
    evals = as_token_lists(eval_sequences, "eval_sequences")
    hint = f"The attack uses {prefix_len}-token prefixes and {suffix_len}-token suffixes; drop short sequences."
    check_min_length(attack, prefix_len + suffix_len, "attack_sequences", hint)
    check_min_length(evals, prefix_len + suffix_len, "eval_sequences", hint)
    for ids, seqs, what in ((attack_ids, attack, "attack_ids"), (eval_ids, evals, "eval_ids")):
        if ids is not None and len(ids) != len(seqs):
            raise ValueError(f"Got {len(ids)} {what} for {len(seqs)} sequences; give one ID per sequence.")
    a_pairs = pair_ids(attack, prefix_len, suffix_len, attack_ids)
    e_pairs = pair_ids(evals, prefix_len, suffix_len, eval_ids)
    check_disjoint(a_pairs, e_pairs)
    check_disjoint(pair_ids(attack, prefix_len, suffix_len), pair_ids(evals, prefix_len, suffix_len))
    if prefix_len > config.max_prefix_len:
        raise ValueError(f"prefix_len {prefix_len} exceeds DSPConfig.max_prefix_len {config.max_prefix_len}.")

    model = unwrap_model(model)
    if not hasattr(model, "get_input_embeddings") or model.get_input_embeddings() is None:
        raise TypeError(f"{type(model).__name__} has no input embeddings; pass a transformers causal LM.")
    device = device_of(model)
    route_attack = resolve_sequence_ids(model, attack, attack_ids)
    route_eval = resolve_sequence_ids(model, evals, eval_ids)
    no_prompt = extraction(model, evals, prefix_len, suffix_len, sequence_ids=route_eval, batch_size=batch_size,
                           progress=progress)
    target = np.array([s[prefix_len:prefix_len + suffix_len] for s in evals], dtype=np.int64)
    pairs = AttackPairs(torch.tensor([s[:prefix_len + suffix_len] for s in attack], dtype=torch.long, device=device),
                   None if route_attack is None else torch.tensor(route_attack, dtype=torch.long, device=device))

    emb_layer = model.get_input_embeddings()
    d = emb_layer.weight.shape[1]
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(config.seed)
        init = initial_prompt(model, config.n_prompts, config.seed).float()
        static = nn.Parameter(init.clone().to(device))
        generator = PromptGenerator(init, config.generator_layers, generator_heads(d, config.generator_heads),
                                    config.max_prefix_len).to(device)

    dtype = emb_layer.weight.dtype

    def static_prompt(prefix: torch.Tensor) -> torch.Tensor:
        return static.to(dtype).expand(prefix.shape[0], -1, -1)

    def dynamic_prompt(prefix: torch.Tensor) -> torch.Tensor:
        embeds = emb_layer(prefix).detach().float()
        return generator(embeds, torch.ones_like(prefix)).to(dtype)

    def objective(make_prompt) -> SuffixLoss:
        return SuffixLoss(model, make_prompt, prefix_len, config.prompt_positions == "overlap", config.batch_size)

    train_loss = {}
    with frozen(model):
        with torch.enable_grad():
            train_loss["static"] = train_prompt(objective(static_prompt), [static], pairs, config, progress,
                                                 "static prompt")
            with torch.no_grad():  # identity blocks: the generator starts as the trained static prompt
                generator.queries.copy_(static)
            generator.train()
            train_loss["dsp"] = train_prompt(objective(dynamic_prompt), list(generator.parameters()), pairs, config,
                                              progress, "DSP generator")
            generator.eval()
        results = {}
        for name, make in (("static", static_prompt), ("dsp", dynamic_prompt)):
            generated = _decode(model, make, evals, prefix_len, suffix_len, route_eval, batch_size, progress,
                                f"{name} extraction", config.prompt_positions)
            results[name] = _score(generated, target, prefix_len, suffix_len)
    return DSPResult(no_prompt=no_prompt, static=results["static"], dsp=results["dsp"], n_attack=len(attack),
                     n_eval=len(evals), config=config, train_loss=train_loss, attack_ids=a_pairs, eval_ids=e_pairs)
