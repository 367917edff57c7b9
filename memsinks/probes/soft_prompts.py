"""Soft prompts against a frozen causal LM: the prefix-conditioned generator, training a prompt, decoding after one.

The parts of the dynamic soft-prompt attack (``memsinks.probes.dsp``, Wang et al. 2024, arXiv
2409.13853): ``PromptGenerator`` maps a prefix to ``m`` prompt vectors; ``train_prompt``
optimises a prompt (static vectors or the generator) so that the frozen target, given
[prompt; prefix], predicts the suffix; ``greedy_with_prompt`` decodes after a prompt with the
probes' batched decoder (``generation.generate_from_embeddings``).

Shapes: B batch, P prefix length, S suffix length, m prompt length, d the target's hidden size.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from memsinks.unwrap import unwrap_model
from memsinks.probes._common import as_token_lists, device_of
from memsinks.probes.generation import generate_from_embeddings

if TYPE_CHECKING:
    from memsinks.probes.dsp import DSPConfig

PROMPT_POSITIONS = ("shifted", "overlap")


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


def generator_heads(d: int, wanted: int | None) -> int:
    """Attention heads of a generator of width ``d``: ``wanted`` if it divides ``d``, else the largest of 8, 4, 2, 1
    that does."""
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
def frozen(model: nn.Module) -> Iterator[None]:
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
class AttackPairs:
    """The attacker's (prefix, suffix) pairs: tokens (N, P + S) and routing IDs (N,) or None."""

    tokens: torch.Tensor
    ids: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, index) -> "AttackPairs":
        return AttackPairs(self.tokens[index], None if self.ids is None else self.ids[index])

    def split(self, share: float) -> tuple["AttackPairs", "AttackPairs"]:
        """Training pairs and the last ``share`` of them (at least one, given 5 pairs or more) for validation."""
        n_val = max(1, int(round(share * len(self)))) if len(self) >= 5 and share > 0 else 0
        return self[:len(self) - n_val], self[len(self) - n_val:]


@dataclass
class SuffixLoss:
    """The attack's loss: the frozen target's suffix NLL after the prompt that ``make_prompt`` gives a prefix."""

    model: nn.Module
    make_prompt: Callable[[torch.Tensor], torch.Tensor]
    prefix_len: int
    overlap: bool
    batch_size: int

    def __call__(self, pairs: AttackPairs) -> torch.Tensor:
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

    def mean(self, pairs: AttackPairs) -> float:
        """The loss over all ``pairs``, batched, without gradients."""
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(pairs), self.batch_size):
                batch = pairs[start:start + self.batch_size]
                total += self(batch).item() * len(batch)
        return total / len(pairs)


def train_prompt(loss: SuffixLoss, params: list[nn.Parameter], pairs: AttackPairs, cfg: DSPConfig, progress: bool,
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
    model = unwrap_model(model)
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
