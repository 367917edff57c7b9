"""The recipe's config: one dataclass per YAML section, the validated ``Recipe``, and the checks across sections.

A config is a YAML mapping of sections. ``model``, ``data``, ``sinks``, ``lora``, ``privacy``,
``probes`` and ``export`` are this recipe's dataclasses below (``data`` extends the corpus
settings the demo and the benchmark share, ``memsinks._memorization_corpus.CorpusConfig``);
``sinks`` and ``privacy`` also take every field of ``memsinks.SinksConfig`` /
``memsinks.PrivacyConfig`` and ``training`` every field of ``transformers.TrainingArguments``, so
the library's own validation applies to them. ``memsinks_recipe.arguments`` reads a YAML file
and ``--section.key value`` overrides into a ``Recipe`` with ``transformers.HfArgumentParser``;
``check_recipe`` then refuses combinations that cannot work, before any data is read.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field

from memsinks._memorization_corpus import CorpusConfig
from memsinks_recipe.common import RecipeError

SCENARIOS = ("pretrain", "finetune")
PROBE_NAMES = ("extraction", "membership", "sink_gap", "memorized_bits")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class RunArguments:
    """The top-level keys."""

    scenario: str = field(default="pretrain", metadata=_help("pretrain or finetune"))
    global_batch_size: int | None = field(default=None, metadata=_help(
        "optional: the batch per optimizer step over all processes; per_device_train_batch_size is derived from it"))


@dataclass
class ModelArguments:
    architecture: str = field(default="gpt2", metadata=_help(
        "pretrain: the transformers model_type to build (gpt2, llama, qwen2, gpt_neox, ...)"))
    config: dict = field(default_factory=dict, metadata=_help(
        "pretrain: fields of that model type's config (n_layer, hidden_size, ...); vocab and special tokens come "
        "from the tokenizer"))
    tokenizer: str | None = field(default=None, metadata=_help(
        "pretrain: a pretrained tokenizer (name or directory) instead of training a local BPE on the corpus"))
    name_or_path: str | None = field(default=None, metadata=_help(
        "finetune: a local from_pretrained directory, or a hub name where the hub is reachable"))
    gguf_file: str | None = field(default=None, metadata=_help(
        "finetune: a GGUF file inside name_or_path (dequantized to dtype on load)"))
    dtype: str = field(default="float32", metadata=_help("dtype of the weights: float32, bfloat16 or float16"))


@dataclass
class DataArguments(CorpusConfig):
    """The corpus settings (``CorpusConfig``: pretraining cuts the text into ``window``-token rows, fine-tuning
    truncates each document to ``window`` tokens) and where the text comes from."""

    source: str = field(default="embedded", metadata=_help(
        "'embedded' (the built-in story corpus), a .txt (blank-line separated documents) or .jsonl file, a "
        "directory written by datasets' save_to_disk, or a datasets name"))
    text_field: str = field(default="text", metadata=_help("the text column / JSON field"))
    split: str = field(default="train", metadata=_help("the split of a saved DatasetDict or a datasets name"))
    id_column: str | None = field(default=None, metadata=_help(
        "finetune: rows sharing this column's value share one sequence ID (memsinks.key_id): user- or "
        "document-level sinks (and DP with privacy.privacy_unit=sequence_id); unset: a hash of each row's tokens"))
    mark_private_spans: bool = field(default=False, metadata=_help(
        "mark private tokens (memsinks.mark_private_spans) so that only the sinks learn them: emails, phone numbers "
        "of 7+ digits and runs of 6+ digits, or data.private_patterns; finetune scenario with sinks only (not with "
        "privacy.enabled)"))
    private_patterns: dict | None = field(default=None, metadata=_help(
        "with data.mark_private_spans: {name: regex} replacing the default patterns (a pattern named phone needs "
        "7+ digits in a match); unset: the library's defaults"))


@dataclass
class SinksArguments:
    enabled: bool = field(default=True, metadata=_help("attach memorization sinks"))
    placement: str | None = field(default=None, metadata=_help(
        "split (pretrain default) or append (finetune default); see memsinks.SinksConfig"))
    audit_routing: bool = field(default=True, metadata=_help(
        "record a fingerprint of the mask of every ID each rank routes, and check at the end of training that "
        "ranks agree (routing must not depend on the rank); written to output_dir/routing_audit.json"))


@dataclass
class LoraArguments:
    enabled: bool = field(default=False, metadata=_help("finetune with LoRA (peft); sinks attach after get_peft_model"))
    r: int = field(default=8, metadata=_help("LoRA rank"))
    alpha: int = field(default=16, metadata=_help("LoRA alpha"))
    dropout: float = field(default=0.0, metadata=_help("LoRA dropout"))
    target_modules: list[str] | None = field(default=None, metadata=_help(
        "modules to adapt; default: peft's choice for the architecture (attention). Not the MLP projections that "
        "carry sinks"))


@dataclass
class PrivacyArguments:
    enabled: bool = field(default=False, metadata=_help(
        "train with DP-SGD (memsinks.make_private); one process only"))


@dataclass
class ProbeArguments:
    enabled: bool = field(default=True, metadata=_help("run memsinks.callbacks.ProbeCallback during training"))
    every_n_steps: int | None = field(default=100, metadata=_help("probe every N optimizer steps (and at the end)"))
    probes: list[str] = field(default_factory=lambda: ["extraction", "membership", "sink_gap"], metadata=_help(
        "which probes: extraction, membership, sink_gap, memorized_bits"))
    canaries: bool = field(default=True, metadata=_help("also log canary exposure (memsinks.callbacks.CanaryCallback)"))
    prefix_len: int = field(default=16, metadata=_help("extraction prompt length in tokens"))
    suffix_len: int = field(default=16, metadata=_help("extraction target length in tokens"))
    max_examples: int = field(default=64, metadata=_help("probe at most this many members and non-members"))
    canary_samples: int = field(default=1000, metadata=_help("sampled candidates per canary for exposure"))
    batch_size: int = field(default=32, metadata=_help("probe batch size"))


@dataclass
class ExportArguments:
    enabled: bool = field(default=True, metadata=_help(
        "after training, write the model without sinks to output_dir/shipped and print the ablation report"))
    prune: bool = field(default=True, metadata=_help(
        "split placement: prune the sink units (a smaller MLP); false zeroes them"))
    report: bool = field(default=True, metadata=_help("measure before/after (memsinks.ablation.removal_report)"))
    canary_samples: int = field(default=2000, metadata=_help("sampled candidates per canary in the report"))


@dataclass
class Recipe:
    """A validated config: the recipe's own sections, the library configs' fields, and where it came from.

    ``sinks_config``, ``privacy_config`` and ``training`` hold the ``SinksConfig``, ``PrivacyConfig``
    and ``TrainingArguments`` fields the config sets (typed), which those classes check themselves.
    """

    scenario: str
    model: ModelArguments
    data: DataArguments
    sinks: SinksArguments
    sinks_config: dict
    lora: LoraArguments
    privacy: PrivacyArguments
    privacy_config: dict
    probes: ProbeArguments
    export: ExportArguments
    training: dict
    global_batch_size: int | None = None
    source: str = ""

    def to_dict(self) -> dict:
        return {
            "scenario": self.scenario, "global_batch_size": self.global_batch_size,
            "model": dataclasses.asdict(self.model), "data": dataclasses.asdict(self.data),
            "sinks": {**dataclasses.asdict(self.sinks), **self.sinks_config}, "lora": dataclasses.asdict(self.lora),
            "privacy": {**dataclasses.asdict(self.privacy), **self.privacy_config},
            "probes": dataclasses.asdict(self.probes), "export": dataclasses.asdict(self.export),
            "training": dict(self.training),
        }


def nearest_key(key: str, candidates: list[str]) -> str | None:
    """The valid key closest to a misspelt one: the same key in another section, else the closest dotted key,
    else the closest last part."""
    leaf = key.rsplit(".", 1)[-1]
    by_leaf: dict[str, str] = {}
    for c in candidates:
        by_leaf.setdefault(c.rsplit(".", 1)[-1], c)
    if "." in key and leaf in by_leaf:
        return by_leaf[leaf]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if close:
        return close[0]
    close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
    return by_leaf[close[0]] if close else None


def check_recipe(r: Recipe) -> None:
    """Combinations of settings that cannot work, and values the library configs reject, before anything runs."""
    import memsinks

    if r.scenario == "finetune" and not r.model.name_or_path:
        raise RecipeError("scenario 'finetune' needs model.name_or_path: a from_pretrained directory or a hub name.")
    path = r.model.name_or_path
    if path and looks_like_path(path) and not os.path.isdir(os.path.expanduser(path)):
        raise RecipeError(f"model.name_or_path {path} does not exist. Give a directory written by save_pretrained "
                          "(for recipes/configs/finetune_cpu.yaml: run recipes/configs/pretrain_cpu.yaml first, which "
                          "exports runs/pretrain_cpu/shipped), or a hub name where the hub is reachable.")
    if r.scenario == "pretrain" and r.model.name_or_path:
        raise RecipeError("model.name_or_path is for scenario 'finetune'; 'pretrain' builds model.architecture from "
                          "model.config. Remove one of them.")
    if r.scenario == "pretrain":
        check_model_config(r.model.architecture, r.model.config)
    if r.lora.enabled and r.scenario != "finetune":
        raise RecipeError("lora.enabled is for fine-tuning a pretrained model (scenario: finetune).")
    if r.model.dtype not in ("float32", "bfloat16", "float16"):
        raise RecipeError(f"model.dtype must be float32, bfloat16 or float16; got {r.model.dtype!r}.")
    d = r.data
    for name in ("window", "n_train", "repeats"):
        if getattr(d, name) is None or getattr(d, name) < 1:
            raise RecipeError(f"data.{name} must be at least 1; got {getattr(d, name)}.")
    for name in ("n_repeated", "n_heldout", "n_canaries"):
        if getattr(d, name) is None or getattr(d, name) < 0:
            raise RecipeError(f"data.{name} must be >= 0; got {getattr(d, name)}.")
    if d.source != "embedded" and looks_like_path(d.source) and not os.path.exists(os.path.expanduser(d.source)):
        raise RecipeError(f"data.source {d.source} does not exist. Give a .txt or .jsonl file, a directory saved with "
                          "datasets' save_to_disk, a datasets name, or 'embedded' for the built-in corpus.")
    if d.id_column is not None and r.scenario == "pretrain":
        raise RecipeError("data.id_column is for finetune; pretraining gives each window the hash of its tokens.")
    if d.id_column is not None and d.source == "embedded":
        raise RecipeError("data.id_column names a column of your data, but data.source is 'embedded' (no columns).")
    if d.mark_private_spans or d.private_patterns is not None:
        check_private_spans(r)
    if r.sinks.enabled:
        try:
            sinks = memsinks.SinksConfig(placement=r.sinks.placement, **r.sinks_config)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"sinks: {err}") from None
        # what make_private, or the routed step's first forward, would refuse after loading the model
        if r.privacy.enabled and sinks.routes_memorized:
            raise RecipeError(f"privacy.enabled with sinks.memorized_threshold {sinks.memorized_threshold} (the "
                              f"default of placement '{sinks.placement}'): DP-SGD cannot clip the second backward "
                              "pass that routes memorized tokens. Add --sinks.memorized_threshold 0.")
        smoothing = r.training.get("label_smoothing_factor") or 0
        if smoothing and sinks.routes_memorized:
            raise RecipeError(f"training.label_smoothing_factor={smoothing} with sinks.memorized_threshold "
                              f"{sinks.memorized_threshold} (the default of placement '{sinks.placement}'): the "
                              "Trainer's label smoother takes the labels from the batch, and routing memorized tokens "
                              "needs the model to compute its own loss. Set training.label_smoothing_factor 0, or add "
                              "--sinks.memorized_threshold 0.")
    if r.privacy.enabled:
        try:
            privacy_config(r)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"privacy: {err}") from None
    if r.probes.enabled:
        unknown = sorted(set(r.probes.probes) - set(PROBE_NAMES))
        if unknown:
            raise RecipeError(f"probes.probes has unknown probes {unknown}; choose from {', '.join(PROBE_NAMES)}.")


def check_private_spans(r: Recipe) -> None:
    """Refuse ``data.mark_private_spans`` where the marks would not reach the sinks, and bad ``data.private_patterns``.

    The marks only matter to a model with sinks trained by the plain Trainer: it trains the marked
    tokens' loss into the sinks alone (``memsinks.private_tokens``), which needs the labels in the batch.
    """
    from memsinks.private_spans import find_private_spans

    d = r.data
    if not d.mark_private_spans:
        raise RecipeError("data.private_patterns is set but data.mark_private_spans is false, so nothing would be "
                          "marked. Set data.mark_private_spans true, or remove data.private_patterns.")
    if r.scenario != "finetune":
        raise RecipeError(
            f"data.mark_private_spans is for scenario 'finetune', not {r.scenario!r}: pretraining cuts the text into "
            "data.window-token windows, so a number across two windows is split and each part can be too short for "
            "the patterns (6 digits, 7 for a phone number) and go unmarked. Fine-tune the pretrained model on the "
            "data with private spans (scenario: finetune), or remove data.mark_private_spans.")
    if not r.sinks.enabled:
        raise RecipeError("data.mark_private_spans needs sinks (sinks.enabled: true): marked tokens train only the "
                          "sinks, and without sinks the model would learn them like every other token. Set "
                          "sinks.enabled true, or remove data.mark_private_spans.")
    if r.privacy.enabled:
        raise RecipeError(
            "data.mark_private_spans cannot be combined with privacy.enabled: DP-SGD (memsinks.make_private) refuses "
            "a private_mask column, because routing the marked tokens into the sinks takes a second backward pass "
            "that per-example clipping does not see, so the DP guarantee would not cover it. Choose one: set "
            "privacy.enabled false to train with marked spans, or data.mark_private_spans false to train with DP-SGD.")
    smoothing = r.training.get("label_smoothing_factor") or 0
    if smoothing > 0:
        raise RecipeError(
            f"data.mark_private_spans with training.label_smoothing_factor={smoothing}: the Trainer's label smoother "
            "takes the labels out of the batch, and the model needs them to train the marked tokens' loss into the "
            "sinks. Set training.label_smoothing_factor 0, or remove data.mark_private_spans.")
    patterns = d.private_patterns
    if patterns is None:
        return
    if not isinstance(patterns, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in patterns.items()):
        raise RecipeError("data.private_patterns is a mapping of names to regular expressions, all strings, e.g. "
                          f"{{account: 'ACC-[0-9]{{8}}'}}; got {patterns!r}.")
    try:
        find_private_spans("", patterns)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"data.private_patterns: {err}") from None


def check_model_config(architecture: str, values: dict) -> None:
    """Refuse model.config keys the architecture's config does not have (they would be silently ignored)."""
    import inspect

    from transformers import CONFIG_MAPPING

    if architecture not in CONFIG_MAPPING:
        near = difflib.get_close_matches(architecture, list(CONFIG_MAPPING.keys()), n=1)
        raise RecipeError(f"model.architecture={architecture!r} is not a transformers model type"
                          + (f"; did you mean {near[0]!r}?" if near else "."))
    cls = CONFIG_MAPPING[architecture]
    known = set(inspect.signature(cls.__init__).parameters) | set(getattr(cls, "attribute_map", {})) | \
        set(cls().to_dict())
    known.discard("self")
    for key, value in values.items():
        if key not in known:
            near = nearest_key(str(key), sorted(known))
            raise RecipeError(f"model.config has {key!r}, which {cls.__name__} does not take"
                              + (f"; did you mean {near!r}?" if near else ".")
                              + (" (On the command line write {n_layer: 2}, with a space after the colon.)"
                                 if ":" in str(key) else ""))
        if value is None:
            raise RecipeError(f"model.config.{key} is empty (null); give it a value or remove it.")


def privacy_config(r: Recipe):
    """The ``memsinks.PrivacyConfig`` of the privacy section (its own checks raise ValueError)."""
    from memsinks.privacy import PrivacyConfig

    return PrivacyConfig(**r.privacy_config)


DATA_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".parquet", ".arrow")


def looks_like_path(source: str) -> bool:
    """Whether ``source`` names a local file or directory (rather than a hub name such as ``org/name``)."""
    return (os.path.exists(os.path.expanduser(source)) or source.startswith((".", "/", "~"))
            or source.endswith(DATA_SUFFIXES))
