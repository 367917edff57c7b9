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
evaluation sequences with the probes' batched decoder (``generation.generate_from_embeddings``)
and reports three ``ExtractionResult``s from one run: no prompt (the plain greedy probe),
static prompt, DSP. The target model is never updated.

Shapes: B batch, P prefix length, S suffix length, m prompt length, d the target's hidden size.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from memsinks.data import content_id
from memsinks.probes._common import (
    as_token_lists, batch_starts, check_min_length, device_of, resolve_sequence_ids, unwrap,
)
from memsinks.probes.extraction import (
    ExtractionResult, exact_match, extraction, longest_common_ngram, token_accuracy,
)
from memsinks.probes.generation import generate_from_embeddings


PROMPT_POSITIONS = ("shifted", "overlap")


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


class PromptGenerator(nn.Module):
    """Maps prefix embeddings (B, P, d) and a padding mask (B, P) to soft prompts (B, m, d).

    ``m`` learned query vectors are appended after the prefix; pre-LN transformer blocks run
    over [prefix; queries] (bidirectional, padded prefix positions masked out) and the outputs
    at the query positions are the prompt. Every block's attention and MLP output projections
    start at zero and the generator's position table at zero, so at initialisation each block is
    exactly the identity and the prompt equals the queries: the static prompt it starts from.
    """

    def __init__(self, init_prompt: torch.Tensor, n_layers: int, n_heads: int, max_prefix_len: int):
        super().__init__()
        m, d = init_prompt.shape
        self.queries = nn.Parameter(init_prompt.detach().clone())
        self.positions = nn.Parameter(torch.zeros(max_prefix_len, d, dtype=init_prompt.dtype))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, n_heads, dim_feedforward=4 * d, dropout=0.0, batch_first=True,
                                       norm_first=True, dtype=init_prompt.dtype)
            for _ in range(n_layers)
        )
        with torch.no_grad():
            for block in self.blocks:
                for proj in (block.self_attn.out_proj, block.linear2):
                    proj.weight.zero_()
                    proj.bias.zero_()

    @property
    def n_prompts(self) -> int:
        return int(self.queries.shape[0])

    def forward(self, prefix_embeds: torch.Tensor, prefix_mask: torch.Tensor) -> torch.Tensor:
        """Prompts (B, m, d) for left- or right-padded prefixes; ``prefix_mask`` is 1 on real tokens."""
        B, P, _ = prefix_embeds.shape
        if P > self.positions.shape[0]:
            raise ValueError(f"Prefix of {P} tokens is longer than the generator's max_prefix_len "
                             f"({self.positions.shape[0]}); raise DSPConfig.max_prefix_len.")
        real = prefix_mask.bool()
        pos = (real.long().cumsum(-1) - 1).clamp(min=0)  # index within the unpadded prefix
        x = torch.cat([prefix_embeds + self.positions[pos], self.queries.expand(B, -1, -1)], dim=1)
        pad = torch.cat([~real, real.new_zeros(B, self.n_prompts)], dim=1)  # True = ignore
        for block in self.blocks:
            x = block(x, src_key_padding_mask=pad)
        return x[:, P:]


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


def _heads_for(d: int, wanted: int | None) -> int:
    if wanted is not None:
        if d % wanted:
            raise ValueError(f"generator_heads={wanted} does not divide the model's hidden size {d}.")
        return wanted
    return next(h for h in (8, 4, 2, 1) if d % h == 0)


def initial_prompt(model: nn.Module, n_prompts: int, seed: int = 0) -> torch.Tensor:
    """(m, d): input embeddings of ``m`` vocabulary tokens drawn with ``seed`` (in the model's embedding range)."""
    emb = model.get_input_embeddings().weight
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, emb.shape[0], (n_prompts,), generator=gen)
    return emb.detach()[tokens.to(emb.device)].clone()


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Inside the block the target is in eval mode and its parameters do not require grad; both restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


@dataclass
class _Pairs:
    """The attacker's (prefix, suffix) pairs: tokens (N, P + S) and routing IDs (N,) or None."""

    tokens: torch.Tensor
    ids: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, index) -> "_Pairs":
        return _Pairs(self.tokens[index], None if self.ids is None else self.ids[index])

    def split(self, share: float) -> tuple["_Pairs", "_Pairs"]:
        """Training pairs and the last ``share`` of them (at least one, given 5 pairs or more) for validation."""
        n_val = max(1, int(round(share * len(self)))) if len(self) >= 5 and share > 0 else 0
        return self[:len(self) - n_val], self[len(self) - n_val:]


@dataclass
class _Objective:
    """The attack's loss: the frozen target's suffix NLL after the prompt that ``make_prompt`` gives a prefix."""

    model: nn.Module
    make_prompt: Callable[[torch.Tensor], torch.Tensor]
    prefix_len: int
    overlap: bool
    batch_size: int

    def __call__(self, pairs: _Pairs) -> torch.Tensor:
        """The mean NLL (nats/token) of the suffix tokens of a batch, given [prompt (B, m, d); pair (B, P + S)]."""
        x, P = pairs.tokens, self.prefix_len
        prompt = self.make_prompt(x[:, :P])
        m = prompt.shape[1]
        kwargs = {} if pairs.ids is None else {"sequence_ids": pairs.ids}
        if self.overlap:  # the prompt at positions 0..m-1, the pair at its own 0..P+S-1
            kwargs["position_ids"] = torch.cat([torch.arange(m), torch.arange(x.shape[1])]).to(x.device).expand(
                x.shape[0], -1)
        embeds = torch.cat([prompt, self.model.get_input_embeddings()(x)], dim=1)
        pred = self.model(inputs_embeds=embeds, use_cache=False, **kwargs).logits[:, m + P - 1:-1].float()
        return nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), x[:, P:].reshape(-1))

    def mean(self, pairs: _Pairs) -> float:
        """The loss over all ``pairs``, batched, without gradients."""
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(pairs), self.batch_size):
                batch = pairs[start:start + self.batch_size]
                total += self(batch).item() * len(batch)
        return total / len(pairs)


def _train_prompt(loss: _Objective, params: list[nn.Parameter], pairs: _Pairs, cfg: DSPConfig, progress: bool,
                  desc: str) -> dict:
    """Optimise ``params`` (AdamW) on random batches of the attacker's pairs to lower ``loss``.

    The last ``validation_share`` of the pairs is held out for model selection: every
    ``eval_every`` steps the validation loss is measured and the parameters with the lowest one
    (the initial ones included) are kept, so a prompt that overfits the attacker's few pairs is
    not the one evaluated. Returns the kept prompt's train / validation losses (nats/token) and
    the step that was kept.
    """
    train, val = pairs.split(cfg.validation_share)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    order = torch.Generator().manual_seed(cfg.seed)
    best = (loss.mean(val), 0, parameters_to_vector(params).detach().clone()) if len(val) else None
    steps = range(1, cfg.steps + 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=desc, unit="step", leave=False)
    for step in steps:
        value = loss(train[torch.randperm(len(train), generator=order)[:cfg.batch_size].to(train.tokens.device)])
        if not torch.isfinite(value):
            raise FloatingPointError(f"{desc}: the attack's training loss became {value.item()}; lower DSPConfig.lr.")
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        if best is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            val_loss = loss.mean(val)
            if val_loss < best[0]:
                best = (val_loss, step, parameters_to_vector(params).detach().clone())
    if best is not None:
        with torch.no_grad():
            vector_to_parameters(best[2], params)
    out = {"train": loss.mean(train), "n_train": len(train), "n_validation": len(val)}
    if best is not None:
        out.update(validation=best[0], kept_step=best[1])
    return out


def greedy_with_prompt(
    model: nn.Module,
    prompts: torch.Tensor,
    prefixes: Sequence[Sequence[int]],
    max_new_tokens: int,
    sequence_ids: Sequence[int] | None = None,
    prompt_positions: str = "shifted",
) -> np.ndarray:
    """Greedy continuations of [prompt_i; prefix_i]: int64 (N, max_new_tokens).

    ``prompts`` (N, m, d) are soft vectors in the target's input-embedding space; the rows are
    decoded by ``generation.generate_from_embeddings`` (left padded, KV cache), which equals
    decoding each row alone with the full forward at every step.
    ``prompt_positions``: ``"shifted"`` (prefix after the prompt's positions) or ``"overlap"``
    (prefix and continuation at their own positions from 0; see ``DSPConfig``).
    """
    if prompt_positions not in PROMPT_POSITIONS:
        raise ValueError(f"prompt_positions must be one of {PROMPT_POSITIONS}; got {prompt_positions!r}.")
    model = unwrap(model)
    device = device_of(model)
    prefixes = as_token_lists(prefixes, "prefixes")
    N, m, _ = prompts.shape
    if N != len(prefixes):
        raise ValueError(f"Got {N} prompts for {len(prefixes)} prefixes; give one prompt per prefix.")
    emb = model.get_input_embeddings()
    with torch.no_grad():
        rows = [torch.cat([prompts[i].to(device=device, dtype=emb.weight.dtype),
                           emb(torch.tensor(p, dtype=torch.long, device=device))]) for i, p in enumerate(prefixes)]
    positions = [list(range(m)) + list(range(len(p))) for p in prefixes] if prompt_positions == "overlap" else None
    return generate_from_embeddings(model, rows, max_new_tokens, sequence_ids, positions)


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

    model = unwrap(model)
    if not hasattr(model, "get_input_embeddings") or model.get_input_embeddings() is None:
        raise TypeError(f"{type(model).__name__} has no input embeddings; pass a transformers causal LM.")
    device = device_of(model)
    route_attack = resolve_sequence_ids(model, attack, attack_ids)
    route_eval = resolve_sequence_ids(model, evals, eval_ids)
    no_prompt = extraction(model, evals, prefix_len, suffix_len, sequence_ids=route_eval, batch_size=batch_size,
                           progress=progress)
    target = np.array([s[prefix_len:prefix_len + suffix_len] for s in evals], dtype=np.int64)
    pairs = _Pairs(torch.tensor([s[:prefix_len + suffix_len] for s in attack], dtype=torch.long, device=device),
                   None if route_attack is None else torch.tensor(route_attack, dtype=torch.long, device=device))

    emb_layer = model.get_input_embeddings()
    d = emb_layer.weight.shape[1]
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(config.seed)
        init = initial_prompt(model, config.n_prompts, config.seed).float()
        static = nn.Parameter(init.clone().to(device))
        generator = PromptGenerator(init, config.generator_layers, _heads_for(d, config.generator_heads),
                                    config.max_prefix_len).to(device)

    dtype = emb_layer.weight.dtype

    def static_prompt(prefix: torch.Tensor) -> torch.Tensor:
        return static.to(dtype).expand(prefix.shape[0], -1, -1)

    def dynamic_prompt(prefix: torch.Tensor) -> torch.Tensor:
        embeds = emb_layer(prefix).detach().float()
        return generator(embeds, torch.ones_like(prefix)).to(dtype)

    def objective(make_prompt) -> _Objective:
        return _Objective(model, make_prompt, prefix_len, config.prompt_positions == "overlap", config.batch_size)

    train_loss = {}
    with _frozen(model):
        with torch.enable_grad():
            train_loss["static"] = _train_prompt(objective(static_prompt), [static], pairs, config, progress,
                                                 "static prompt")
            with torch.no_grad():  # identity blocks: the generator starts as the trained static prompt
                generator.queries.copy_(static)
            generator.train()
            train_loss["dsp"] = _train_prompt(objective(dynamic_prompt), list(generator.parameters()), pairs, config,
                                              progress, "DSP generator")
            generator.eval()
        results = {}
        for name, make in (("static", static_prompt), ("dsp", dynamic_prompt)):
            generated = _decode(model, make, evals, prefix_len, suffix_len, route_eval, batch_size, progress,
                                f"{name} extraction", config.prompt_positions)
            results[name] = _score(generated, target, prefix_len, suffix_len)
    return DSPResult(no_prompt=no_prompt, static=results["static"], dsp=results["dsp"], n_attack=len(attack),
                     n_eval=len(evals), config=config, train_loss=train_loss, attack_ids=a_pairs, eval_ids=e_pairs)
