"""`SinksConfig`: the settings of memorization sinks, validated on creation and saved beside the weights.

The config is to sinks what peft's `LoraConfig` is to adapters: a small dataclass that
``save_pretrained`` writes as ``sinks_config.json`` next to ``config.json`` and the
safetensors, and that ``memsinks.from_pretrained`` reads back to rebuild identical routing.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from memsinks._saved_config import SavedConfig
from memsinks.ids import MAX_SEQUENCE_ID, validate_sequence_id

SINKS_CONFIG_NAME = "sinks_config.json"
PLACEMENTS = ("split", "append")
EVAL_MODES = ("drop", "mean", "own", "exclude")
HASH_SCHEMES = ("splitmix64-v1",)
SINK_INITS = ("mirror", "zero", "random")
PRIVATE_TOKEN_TARGETS = ("none", "batch_marginal")

#: What a placement does when a training-dynamics field is left unset (None): the settings measured best
#: (benchmarks/finetune_isolation.py for append; the paper's setup for split).
PLACEMENT_DEFAULTS = {
    "append": {"sink_lr_scale": 32.0, "sink_init": "mirror", "centered_masks": True, "sink_warmup_steps": 8,
               "memorized_threshold": 1.0},
    "split": {"sink_lr_scale": 1.0, "sink_init": None, "centered_masks": False, "sink_warmup_steps": 0,
              "memorized_threshold": 0.0},
}
#: ``layers="auto"`` with memorized tokens routed gives sinks to one block in this many, counted from the top
#: (rounded up): the sinks' pass then computes only those blocks and the head (``memsinks.shared_prefix``). The
#: last third (10 of SmolLM2-135M's 30 blocks) kept the gap closed; the last sixth did not (docs/finetuning.md).
AUTO_LAYERS_ONE_IN = 3
#: What a sinks_config.json written before these fields existed meant (the behaviour of that version).
LEGACY_VALUES = {"sink_lr_scale": 1.0, "sink_init": "zero", "centered_masks": False, "sink_warmup_steps": 0,
                 "memorized_threshold": 0.0, "memorized_missed_only": False, "layers": None}
# the fields that decide which units are sinks and which IDs switch them on (checked against the weights at load)
ROUTING_FIELDS = ("placement", "p_gen", "p_mem", "n_sink_units", "layers", "routing_seed", "hash_scheme",
                  "base_intermediate_size", "sink_init", "sink_lr_scale", "centered_masks")


@dataclass
class SinksConfig(SavedConfig):
    """How the MLP units of each selected block are split into shared units and a sink pool.

    Each field's meaning is in its ``metadata["help"]`` (the one source that documentation and
    ``--help-config`` read, as in peft's ``LoraConfig``).
    """

    CONFIG_NAME = SINKS_CONFIG_NAME

    p_gen: float = field(default=0.7, metadata={"help": (
        "Share of a block's existing MLP units that stay shared (always on) under placement='split'; the "
        "remaining 1 - p_gen form the sink pool. The paper's setting keeps about 70% shared. Ignored by "
        "'append', where every original unit is shared.")})
    p_mem: float = field(default=0.3, metadata={"help": (
        "Share of the sink pool that one sequence ID switches on (paper: 0.3).")})
    placement: str = field(default="split", metadata={"help": (
        "'split' carves the pool out of the existing units (training from scratch); 'append' adds "
        "n_sink_units new units per selected MLP whose down-projection weights start at zero, so the model's "
        "function is unchanged (fine-tuning a pretrained model).")})
    n_sink_units: int | None = field(default=None, metadata={"help": (
        "Size of the appended pool per MLP ('append' only).")})
    layers: list[int] | str | None = field(default="auto", metadata={"help": (
        "Indices of the transformer blocks that get sinks (negative indices count from the end); None means "
        "every block. 'auto' (the default): with placement='append' and memorized tokens routed "
        "(memorized_threshold above 0, the append default), the last third of the blocks, rounded up; "
        "otherwise every block (add_sinks writes the blocks it chose into the model's copy of the config). "
        "With memorized_threshold or a private_mask, the blocks below the lowest sink block run once per "
        "training forward and the sinks' pass computes only the blocks above and the head "
        "(memsinks.shared_prefix), so sinks in the upper blocks alone cost less.")})
    routing_seed: int = field(default=0, metadata={"help": (
        "Seed of the ID-to-sink hash. Two models with the same seed route every ID to the same units.")})
    eval_mode: str = field(default="drop", metadata={"help": (
        "What the sinks do when the model is in eval mode and no sinks_mode context is active: 'drop' (sinks "
        "off: the shipped model), 'mean' (sinks scaled by p_mem), 'own' (each sequence's own sinks, needs "
        "sequence_ids) or 'exclude' (exclude_ids' sinks off).")})
    exclude_ids: list[int] = field(default_factory=list, metadata={"help": (
        "IDs whose sinks 'exclude' mode switches off.")})
    hash_scheme: str = field(default="splitmix64-v1", metadata={"help": (
        "Version of the routing hash; kept in the file so that a future change of the hash can never "
        "silently re-route an old checkpoint.")})
    mask_cache_size: int = field(default=8192, metadata={"help": (
        "How many IDs' masks are kept on the device between batches.")})
    base_intermediate_size: int | None = field(default=None, metadata={"help": (
        "MLP width before sinks were appended; filled in by add_sinks and used to restore the original "
        "architecture.")})
    model_type: str | None = field(default=None, metadata={"help": (
        "The transformers model_type the sinks were attached to (filled in by add_sinks).")})
    sink_lr_scale: float | None = field(default=None, metadata={"help": (
        "Learning-rate multiplier of the sink parameters under Adam-type optimizers: the sinks are stored "
        "divided by it and multiplied back in the forward, so each optimizer step moves them this many times "
        "further (under plain SGD, its square). A power of two, so that saving and loading are exact. Unset: 32 "
        "for 'append' (a pretrained model's shared units memorize within a few steps; the sinks must learn "
        "faster to take the memorization), 1 for 'split' (the paper's setup; under 'split' the pool's rows and "
        "columns of the MLP's own weights are stored divided by it; from scratch, 4 let the sinks take more of "
        "the repeated text at a small held-out cost in benchmarks/results/sweep_lr_scale). The sinks' effective "
        "learning rate is the optimizer's times this; keep it at or below 1.5e-2 (at the first step of an Adam-type "
        "optimizer the model warns, with a scale that fits, when it is above).")})
    sink_init: str | None = field(default=None, metadata={"help": (
        "How appended units start ('append' only). 'mirror' (the default): units come in pairs with equal up "
        "rows, opposite down columns and one routing bit, so their outputs cancel exactly and the model's "
        "function is unchanged, while every unit gets a gradient from the first step. 'zero': random up rows, "
        "zero down columns (exact, but the up rows get no gradient until the down columns have moved). "
        "'random': random down columns (not function-preserving).")})
    centered_masks: bool | None = field(default=None, metadata={"help": (
        "Route with zero-mean coefficients: a sequence's own sink units get 1 - p_mem and the rest of the pool "
        "-p_mem, instead of 1 and 0. What is common to all sequences then cancels across the pool, so the "
        "sinks hold only what is specific to a sequence (a repeated record's secrets) and the shared units "
        "keep the task; 'mean' mode equals 'drop'. Unset: on for 'append', off for 'split' (the paper's "
        "routing).")})
    sink_warmup_steps: int | None = field(default=None, metadata={"help": (
        "Training forward passes at the start of training in which only the sinks learn (every other "
        "trainable parameter's gradient is zeroed), so that content seen then is taken by the sinks before "
        "the shared units start learning. Counted in forward passes in training mode (optimizer steps times "
        "gradient accumulation steps), saved with the model so that a resumed run does not repeat it. "
        "Unset: 8 for 'append', 0 for 'split'.")})
    private_token_target: str = field(default="none", metadata={"help": (
        "With a private_mask in the batch: what the shipped model (sinks dropped) is trained to predict where "
        "the next token is private. 'none' (the default): nothing; no private token's value reaches a shared "
        "parameter, but a kind of token that is only ever private (every digit, when every number is marked) "
        "is never a target for the shipped model and becomes improbable to it. 'batch_marginal': the "
        "distribution of the micro-batch's private tokens, pooled over all its private positions and records, "
        "so the shipped model keeps predicting the kind of token (a digit) without which one or in what order. "
        "It leaks which tokens a record's private spans hold, though not their order: each record's tokens are "
        "part of the target wherever the record is in the batch (measured on SmolLM2-135M: repeated records' "
        "secrets 1.6 nats per token likelier than unseen ones', no extraction, exposure near chance; "
        "docs/finetuning.md). Use it for numbers, where the bag of digits says little.")})

    memorized_threshold: float | None = field(default=None, metadata={"help": (
        "Route what the sinks have memorized to the sinks alone, without labels (memsinks.memorized_tokens). "
        "In training every batch runs twice: with each sequence's own sinks on, training only the sinks on "
        "every token; with the sinks dropped, training the rest on every token but those whose loss with "
        "their own sinks on is below this many nats while their loss with the sinks dropped is above it. A "
        "span a sequence's sinks have memorized and the shipped model has not then stops reaching the shipped "
        "model, as a marked private span does. 0: off. Unset: 1.0 for 'append' (what "
        "benchmarks/finetune_isolation.py measured best without labels), off for 'split'. Costs what "
        "private_mask costs: a second forward per step and a backward that stops at the sinks. DP-SGD refuses "
        "it (its second backward is outside per-example clipping): set 0 to train with make_private.")})
    memorized_specific: bool = field(default=False, metadata={"help": (
        "With memorized_threshold: route a token only if the sinks of a sequence never trained on do not "
        "predict it either (their loss is above the threshold too), so that what the whole pool has learned "
        "from many sequences (a domain's common language) keeps training the shipped model and only what is "
        "specific to the sequence goes to its sinks. Costs a third forward per step, without gradient.")})
    memorized_missed_only: bool | None = field(default=None, metadata={"help": (
        "Unset: on when memorized_threshold routes tokens under placement='append', else off. "
        "With memorized_threshold: the pass with the sinks on trains the sinks only on the tokens the shipped "
        "model misses (loss above the threshold with the sinks dropped) and the marked ones, the only tokens "
        "that can be routed, and computes the output layer at those positions alone. The sinks then spend "
        "nothing on what the shipped model already predicts, and the output layer's cost in that pass (a large "
        "part of it when the vocabulary is large) shrinks with the share of such tokens. The pass with the "
        "sinks dropped runs first, so both passes' activations are held at once. The model's forward must "
        "compute logits at every position through its output embeddings (get_output_embeddings()).")})

    def __post_init__(self) -> None:
        for name in ("p_gen", "p_mem"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise ValueError(f"SinksConfig.{name} must be a number in (0, 1]; got {value!r}.")
            setattr(self, name, float(value))
        if self.placement not in PLACEMENTS:
            raise ValueError(f"SinksConfig.placement must be one of {PLACEMENTS}; got {self.placement!r}.")
        if self.placement == "append":
            if not isinstance(self.n_sink_units, int) or isinstance(self.n_sink_units, bool) or self.n_sink_units < 1:
                raise ValueError(
                    "placement='append' needs n_sink_units, a positive int: how many sink units to add to "
                    f"each selected MLP (for example 256); got {self.n_sink_units!r}."
                )
        else:
            if self.n_sink_units is not None:
                raise ValueError(
                    "n_sink_units is only used by placement='append'; with placement='split' the pool size "
                    "is set by p_gen (pool = (1 - p_gen) of each MLP's units). Remove n_sink_units or use append."
                )
            if self.p_gen >= 1.0:
                raise ValueError("placement='split' with p_gen=1.0 leaves no sink pool; use p_gen < 1.")
        if self.layers == "auto":
            pass
        elif isinstance(self.layers, str):
            raise ValueError(f"SinksConfig.layers must be a non-empty list of ints, None (every block) or 'auto'; got "
                             f"{self.layers!r}.")
        elif self.layers is not None:
            layers = list(self.layers)
            if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
                raise ValueError(f"SinksConfig.layers must be a non-empty list of ints, None (every block) or 'auto'; "
                                 f"got {self.layers!r}.")
            if len(set(layers)) != len(layers):
                raise ValueError(f"SinksConfig.layers has duplicates: {self.layers!r}.")
            self.layers = layers
        if not isinstance(self.routing_seed, int) or isinstance(self.routing_seed, bool) or not 0 <= self.routing_seed <= MAX_SEQUENCE_ID:
            raise ValueError(f"SinksConfig.routing_seed must be an int in [0, 2**63); got {self.routing_seed!r}.")
        if self.eval_mode not in EVAL_MODES:
            raise ValueError(f"SinksConfig.eval_mode must be one of {EVAL_MODES}; got {self.eval_mode!r}.")
        self.exclude_ids = [validate_sequence_id(i, "exclude_ids") for i in self.exclude_ids]
        if self.eval_mode == "exclude" and not self.exclude_ids:
            raise ValueError("eval_mode='exclude' needs exclude_ids: the sequence IDs whose sinks to switch off.")
        if self.hash_scheme not in HASH_SCHEMES:
            raise ValueError(
                f"SinksConfig.hash_scheme {self.hash_scheme!r} is unknown to this memsinks version "
                f"(known: {HASH_SCHEMES}); upgrade memsinks to load this checkpoint."
            )
        if not _is_int(self.mask_cache_size) or self.mask_cache_size < 0:
            raise ValueError(f"SinksConfig.mask_cache_size must be an int >= 0; got {self.mask_cache_size!r}.")
        if self.base_intermediate_size is not None and (not _is_int(self.base_intermediate_size)
                                                        or self.base_intermediate_size < 1):
            raise ValueError("SinksConfig.base_intermediate_size must be a positive int or None (add_sinks fills it "
                             f"in); got {self.base_intermediate_size!r}.")
        if self.model_type is not None and not isinstance(self.model_type, str):
            raise ValueError(f"SinksConfig.model_type must be a str or None; got {self.model_type!r}.")
        self._resolve_training_fields()

    def routing_fields(self) -> dict[str, Any]:
        """The values of ``ROUTING_FIELDS``: what a checkpoint's weights were trained with."""
        return {name: getattr(self, name) for name in ROUTING_FIELDS}

    def _resolve_training_fields(self) -> None:
        """Fill the unset training-dynamics fields with the placement's defaults and check them."""
        for name, value in PLACEMENT_DEFAULTS[self.placement].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        scale = self.sink_lr_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0 or not math.isfinite(scale) \
                or math.frexp(scale)[0] != 0.5:
            near = 2.0 ** round(math.log2(scale)) if isinstance(scale, (int, float)) and scale > 0 else 32
            raise ValueError(
                f"SinksConfig.sink_lr_scale must be a positive power of two (so the stored sinks times the scale "
                f"are the weights exactly); got {scale!r}. Use {near:g}.")
        self.sink_lr_scale = float(scale)
        if self.placement == "split":
            if self.sink_init is not None:
                raise ValueError("sink_init applies to placement='append'; 'split' sinks are the model's own units.")
        else:
            if self.sink_init not in SINK_INITS:
                raise ValueError(f"SinksConfig.sink_init must be one of {SINK_INITS}; got {self.sink_init!r}.")
            if self.sink_init == "mirror" and self.n_sink_units % 2:
                raise ValueError(f"sink_init='mirror' makes units in pairs, so n_sink_units must be even; got "
                                 f"{self.n_sink_units}. Use {self.n_sink_units + 1}.")
        if not isinstance(self.centered_masks, bool):
            raise ValueError(f"SinksConfig.centered_masks must be True or False; got {self.centered_masks!r}.")
        steps = self.sink_warmup_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"SinksConfig.sink_warmup_steps must be an int >= 0; got {steps!r}.")
        threshold = self.memorized_threshold
        number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
        if not number or not 0.0 <= threshold < float("inf"):
            raise ValueError(f"SinksConfig.memorized_threshold must be a number of nats >= 0 (0: off), or unset for "
                             f"the placement's default; got {threshold!r}.")
        self.memorized_threshold = float(threshold)
        if not isinstance(self.memorized_specific, bool):
            raise ValueError(f"SinksConfig.memorized_specific must be True or False; got {self.memorized_specific!r}.")
        if self.memorized_specific and not self.routes_memorized:
            raise ValueError("SinksConfig.memorized_specific narrows the tokens memorized_threshold routes, and "
                             "memorized_threshold is 0 (off); set a threshold (e.g. 1.0) or memorized_specific=False.")
        if self.memorized_missed_only is None:
            self.memorized_missed_only = self.placement == "append" and self.routes_memorized
        if not isinstance(self.memorized_missed_only, bool):
            raise ValueError(f"SinksConfig.memorized_missed_only must be True or False; got "
                             f"{self.memorized_missed_only!r}.")
        if self.memorized_missed_only and not self.routes_memorized:
            raise ValueError("SinksConfig.memorized_missed_only narrows what the sinks learn when memorized_threshold "
                             "routes tokens, and memorized_threshold is 0 (off); set a threshold (e.g. 1.0) or "
                             "memorized_missed_only=False.")
        if self.private_token_target not in PRIVATE_TOKEN_TARGETS:
            raise ValueError(f"SinksConfig.private_token_target must be one of {PRIVATE_TOKEN_TARGETS}; got "
                             f"{self.private_token_target!r}.")
        if self.private_token_target != "none" and self.routes_memorized:
            raise ValueError(f"SinksConfig.private_token_target={self.private_token_target!r} shapes the marked "
                             "tokens' one-pass step, and memorized_threshold routes tokens (the append default), whose "
                             "step has no such target. Set memorized_threshold=0 to use it.")

    @property
    def routes_memorized(self) -> bool:
        """Whether training routes the tokens the sinks memorized to the sinks alone (``memorized_threshold`` > 0)."""
        return self.memorized_threshold > 0

    def auto_layers(self, n_blocks: int) -> list[int] | None:
        """The blocks ``layers="auto"`` means in a model of ``n_blocks``: the top 1 / ``AUTO_LAYERS_ONE_IN`` of
        them (rounded up) with append sinks and routing, else None (every block)."""
        if self.placement != "append" or not self.routes_memorized:
            return None
        count = (n_blocks + AUTO_LAYERS_ONE_IN - 1) // AUTO_LAYERS_ONE_IN
        return list(range(n_blocks - count, n_blocks))

    @property
    def paired_units(self) -> bool:
        """Whether appended units come in mirrored pairs that share one routing bit (unit u and u + pool/2)."""
        return self.placement == "append" and self.sink_init == "mirror"

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """A saved config; fields a file written before they existed lacks take the values of that version."""
        legacy = dict(LEGACY_VALUES)
        if data.get("placement", "split") == "split":
            legacy["sink_init"] = None
        data = {**{k: v for k, v in legacy.items() if k not in data}, **data}
        if data.get("memorized_threshold", 0.0) is None:  # off, in the versions whose default was None for off;
            data["memorized_threshold"] = 0.0              # since then a saved config always holds a number
        return super().from_dict(data)

    def pool_size(self, intermediate_size: int) -> int:
        """Number of sink units in an MLP whose original width is ``intermediate_size``."""
        if self.placement == "append":
            return int(self.n_sink_units)
        shared = int(round(self.p_gen * intermediate_size))
        pool = intermediate_size - shared
        if pool < 1 or shared < 1:
            raise ValueError(
                f"p_gen={self.p_gen} on an MLP of {intermediate_size} units leaves {shared} shared and {pool} sink "
                "units; both must be at least 1. Choose p_gen so that both parts are non-empty."
            )
        return pool

    @classmethod
    def _missing_message(cls, directory) -> str:
        return (
            f"No {SINKS_CONFIG_NAME} in {directory}: this is not a memsinks checkpoint. A plain transformers "
            "model loads with AutoModelForCausalLM.from_pretrained; attach sinks with memsinks.add_sinks."
        )


def routing_digest(fields: dict[str, Any]) -> str:
    """A SHA-256 of routing fields (``SinksConfig.routing_fields()``), independent of key order."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
