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
prompt, so DSP begins where the static baseline ended), then decodes
greedily on disjoint evaluation sequences and reports three ``ExtractionResult``s from one run:
no prompt (the plain greedy probe), static prompt, DSP. The target model is never updated.

Shapes: B batch, P prefix length, S suffix length, m prompt length, d the target's hidden size.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from memsinks.data import content_id
from memsinks.probes._common import (
    as_token_lists, batch_starts, check_min_length, device_of, resolve_sequence_ids,
)
from memsinks.probes.extraction import (
    ExtractionResult, exact_match, extraction, longest_common_ngram, token_accuracy,
)
from memsinks.unwrap import unwrap_model


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


def _prompt_position_ids(m: int, length: int, overlap: bool, device) -> torch.Tensor | None:
    """Position IDs (1, m + length) for [prompt; tokens]: None (the model's default 0..m+length-1) when shifted,
    0..m-1 then 0..length-1 when the tokens keep their own positions."""
    if not overlap:
        return None
    return torch.cat([torch.arange(m, device=device), torch.arange(length, device=device)])[None]


def _suffix_nll(model: nn.Module, prompt: torch.Tensor, pairs: torch.Tensor, prefix_len: int,
                ids: torch.Tensor | None, overlap: bool = False) -> torch.Tensor:
    """Mean NLL (nats/token) of the suffix tokens given [prompt (B, m, d); pairs (B, P + S)]."""
    m = prompt.shape[1]
    embeds = torch.cat([prompt, model.get_input_embeddings()(pairs)], dim=1)
    kwargs = {} if ids is None else {"sequence_ids": ids}
    position_ids = _prompt_position_ids(m, pairs.shape[1], overlap, pairs.device)
    if position_ids is not None:
        kwargs["position_ids"] = position_ids.expand(pairs.shape[0], -1)
    logits = model(inputs_embeds=embeds, use_cache=False, **kwargs).logits
    start = m + prefix_len - 1
    pred = logits[:, start:-1].float()
    return nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), pairs[:, prefix_len:].reshape(-1))


def _mean_suffix_nll(model, make_prompt, pairs, prefix_len, ids, batch_size, overlap: bool = False) -> float:
    """Mean suffix NLL over all ``pairs`` (N, P + S), batched, without gradients."""
    n = pairs.shape[0]
    total = 0.0
    with torch.no_grad():
        for s in range(0, n, batch_size):
            x = pairs[s:s + batch_size]
            total += _suffix_nll(model, make_prompt(x[:, :prefix_len]), x, prefix_len,
                                 None if ids is None else ids[s:s + batch_size], overlap).item() * x.shape[0]
    return total / n


def _train_prompt(model, make_prompt, params, pairs, prefix_len, ids, cfg: DSPConfig, progress: bool,
                  desc: str) -> dict:
    """Optimise ``params`` so that ``make_prompt(prefix_tokens)`` maximises the suffix likelihood.

    The last ``validation_share`` of the attacker's pairs (at least one, when there are 5 or more)
    is held out for model selection: every ``eval_every`` steps the validation loss is measured and
    the parameters with the lowest one (the initial ones included) are kept, so a prompt that
    overfits the attacker's few pairs is not the one evaluated. Returns final train / validation
    losses (nats/token) and the step that was kept.
    """
    device = device_of(model)
    n_val = max(1, int(round(cfg.validation_share * len(pairs)))) if len(pairs) >= 5 and cfg.validation_share > 0 else 0
    train_pairs, val_pairs = pairs[:len(pairs) - n_val], pairs[len(pairs) - n_val:]
    train_ids = None if ids is None else ids[:len(pairs) - n_val]
    val_ids = None if ids is None else ids[len(pairs) - n_val:]
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = train_pairs.shape[0]
    overlap = cfg.prompt_positions == "overlap"

    def validate() -> float:
        return _mean_suffix_nll(model, make_prompt, val_pairs, prefix_len, val_ids, cfg.batch_size, overlap)

    best = (validate(), 0, [p.detach().clone() for p in params]) if n_val else None
    steps = range(1, cfg.steps + 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=desc, unit="step", leave=False)
    for step in steps:
        batch = torch.randperm(n, generator=gen)[:cfg.batch_size].to(device)
        x = train_pairs[batch]
        loss = _suffix_nll(model, make_prompt(x[:, :prefix_len]), x, prefix_len,
                           None if train_ids is None else train_ids[batch], overlap)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: the attack's training loss became {loss.item()}; lower DSPConfig.lr.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if best is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            val = validate()
            if val < best[0]:
                best = (val, step, [p.detach().clone() for p in params])
    if best is not None:
        with torch.no_grad():
            for p, kept in zip(params, best[2]):
                p.copy_(kept)
    out = {"train": _mean_suffix_nll(model, make_prompt, train_pairs, prefix_len, train_ids, cfg.batch_size,
                                     overlap),
           "n_train": int(n), "n_validation": int(n_val)}
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
    """Greedy continuations of [prompt_i; prefix_i] with the KV cache: int64 (N, max_new_tokens).

    ``prompts`` (N, m, d) are soft vectors in the target's input-embedding space. Rows are left
    padded (pads masked out, positions counted from each row's first real vector), so the
    result equals decoding each row alone with the full forward at every step.
    ``prompt_positions``: ``"shifted"`` (prefix after the prompt's positions) or ``"overlap"``
    (prefix and continuation at their own positions from 0; see ``DSPConfig``).
    """
    if prompt_positions not in PROMPT_POSITIONS:
        raise ValueError(f"prompt_positions must be one of {PROMPT_POSITIONS}; got {prompt_positions!r}.")
    model = unwrap_model(model)
    device = device_of(model)
    prefixes = as_token_lists(prefixes, "prefixes")
    N, m, _ = prompts.shape
    if N != len(prefixes):
        raise ValueError(f"Got {N} prompts for {len(prefixes)} prefixes; give one prompt per prefix.")
    L = max(len(p) for p in prefixes)
    T = m + L
    ids = torch.zeros((N, L), dtype=torch.long)
    real = torch.zeros((N, L), dtype=torch.bool)  # real prefix tokens, left padded
    mask = torch.zeros((N, T), dtype=torch.long)  # row i: pads, then its prompt, then its prefix
    for i, p in enumerate(prefixes):
        ids[i, L - len(p):] = torch.tensor(p, dtype=torch.long)
        real[i, L - len(p):] = True
        mask[i, L - len(p):] = 1
    ids, real, mask = ids.to(device), real.to(device), mask.to(device)
    tok = model.get_input_embeddings()(ids)
    embeds = torch.zeros((N, T, tok.shape[-1]), dtype=tok.dtype, device=device)
    for i, p in enumerate(prefixes):
        embeds[i, L - len(p):L - len(p) + m] = prompts[i].to(device=device, dtype=tok.dtype)
    embeds[:, m:] = torch.where(real[:, :, None], tok, embeds[:, m:])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    if prompt_positions == "overlap":  # a row's first m real vectors are its prompt; its prefix restarts at 0
        pos = torch.where(pos >= m, pos - m, pos)
    kwargs = {}
    if sequence_ids is not None:
        kwargs["sequence_ids"] = torch.as_tensor(list(sequence_ids), dtype=torch.long, device=device)
    out = torch.zeros((N, max_new_tokens), dtype=torch.long, device=device)
    res = model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True, **kwargs)
    last = pos[:, -1:]
    for step in range(max_new_tokens):
        nxt = res.logits[:, -1].argmax(dim=-1)
        out[:, step] = nxt
        if step + 1 == max_new_tokens:
            break
        mask = torch.cat([mask, mask.new_ones(N, 1)], dim=1)
        last = last + 1
        res = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last,
                    past_key_values=res.past_key_values, use_cache=True, **kwargs)
    return out.cpu().numpy()


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
    pairs = torch.tensor([s[:prefix_len + suffix_len] for s in attack], dtype=torch.long, device=device)
    route_t = None if route_attack is None else torch.tensor(route_attack, dtype=torch.long, device=device)

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

    train_loss = {}
    with _frozen(model):
        with torch.enable_grad():
            train_loss["static"] = _train_prompt(model, static_prompt, [static], pairs, prefix_len, route_t, config,
                                                 progress, "static prompt")
            with torch.no_grad():  # identity blocks: the generator starts as the trained static prompt
                generator.queries.copy_(static)
            generator.train()
            train_loss["dsp"] = _train_prompt(model, dynamic_prompt, list(generator.parameters()), pairs, prefix_len,
                                              route_t, config, progress, "DSP generator")
            generator.eval()
        results = {}
        for name, make in (("static", static_prompt), ("dsp", dynamic_prompt)):
            generated = _decode(model, make, evals, prefix_len, suffix_len, route_eval, batch_size, progress,
                                f"{name} extraction", config.prompt_positions)
            results[name] = _score(generated, target, prefix_len, suffix_len)
    return DSPResult(no_prompt=no_prompt, static=results["static"], dsp=results["dsp"], n_attack=len(attack),
                     n_eval=len(evals), config=config, train_loss=train_loss, attack_ids=a_pairs, eval_ids=e_pairs)
