"""The recipe's config: YAML sections as dataclasses, ``--section.key value`` overrides, checks before any work.

A config is a YAML mapping of sections. ``model``, ``data``, ``sinks``, ``lora``, ``privacy``,
``probes`` and ``export`` are this recipe's dataclasses below; ``sinks`` and ``privacy`` also
take every field of ``memsinks.SinksConfig`` / ``memsinks.PrivacyConfig`` and ``training`` every
field of ``transformers.TrainingArguments``, so the library's own validation applies to them.
A key that does not exist is an error naming the nearest valid key (the same key in another
section first, then the closest spelling), because a silently ignored typo would train
something other than what the user asked for.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from memsinks_recipe.common import RecipeError

SCENARIOS = ("pretrain", "finetune")
PROBE_NAMES = ("extraction", "membership", "sink_gap", "memorized_bits")
_BOOLEAN_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


class _Loader(yaml.SafeLoader):
    """YAML 1.2's scalars: only true/false are booleans (``save_strategy: no`` stays the string "no"), and
    ``1e-3`` is a float (YAML 1.1 reads both wrong)."""


_BOOL_TAG, _FLOAT_TAG = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(_FLOAT_TAG, re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def read_yaml(text):
    """Parse YAML text or a stream with YAML 1.2 scalars."""
    return yaml.load(text, Loader=_Loader)


def _help(text: str) -> dict:
    return {"help": text}


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
class DataArguments:
    source: str = field(default="embedded", metadata=_help(
        "'embedded' (the built-in story corpus), a .txt (blank-line separated documents) or .jsonl file, a "
        "directory written by datasets' save_to_disk, or a datasets name"))
    text_field: str = field(default="text", metadata=_help("the text column / JSON field"))
    split: str = field(default="train", metadata=_help("the split of a saved DatasetDict or a datasets name"))
    id_column: str | None = field(default=None, metadata=_help(
        "finetune: rows sharing this column's value share one sequence ID (memsinks.key_id): user- or "
        "document-level sinks (and DP with privacy.privacy_unit=sequence_id); unset: a hash of each row's tokens"))
    window: int = field(default=64, metadata=_help(
        "tokens per training row: pretrain cuts the text into windows of this length, finetune truncates "
        "each document to it"))
    n_train: int = field(default=1500, metadata=_help("unique training rows (stories, windows or documents)"))
    n_repeated: int = field(default=16, metadata=_help("rows drawn to be repeated (the memorization targets)"))
    repeats: int = field(default=24, metadata=_help("how many times each repeated row and each canary is trained on"))
    n_heldout: int = field(default=64, metadata=_help("rows held out of training (non-members for the probes)"))
    n_canaries: int = field(default=4, metadata=_help(
        "canaries planted ('<name> said: my account number is <digits>.')"))
    canary_digits: int = field(default=6, metadata=_help("digits in a canary's secret"))
    vocab_size: int = field(default=512, metadata=_help("pretrain: vocabulary of the local BPE tokenizer"))
    max_chars: int = field(default=20_000_000, metadata=_help("pretrain from text: read at most this many characters"))
    seed: int = field(default=0, metadata=_help("draws the corpus, the repeated and held-out rows and the canaries"))


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
    target_modules: list | None = field(default=None, metadata=_help(
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
    probes: list = field(default_factory=lambda: ["extraction", "membership", "sink_gap"], metadata=_help(
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


def _sinks_config_fields() -> dict[str, dataclasses.Field]:
    import memsinks

    internal = {"base_intermediate_size", "model_type", "hash_scheme"}
    return {f.name: f for f in dataclasses.fields(memsinks.SinksConfig) if f.name not in internal}


def _privacy_config_fields() -> dict[str, dataclasses.Field]:
    from memsinks.privacy import PrivacyConfig

    return {f.name: f for f in dataclasses.fields(PrivacyConfig)}


def _training_fields() -> dict[str, dataclasses.Field]:
    from transformers import TrainingArguments

    return {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init}


# section name -> (the recipe's own dataclass or None, the library's fields it also takes)
def _sections() -> dict[str, tuple[type | None, Any]]:
    return {
        "model": (ModelArguments, None),
        "data": (DataArguments, None),
        "sinks": (SinksArguments, _sinks_config_fields),
        "lora": (LoraArguments, None),
        "privacy": (PrivacyArguments, _privacy_config_fields),
        "probes": (ProbeArguments, None),
        "export": (ExportArguments, None),
        "training": (None, _training_fields),
    }


TOP_LEVEL_KEYS = {"scenario": "pretrain or finetune", "global_batch_size": "optional: the batch per optimizer step "
                  "over all processes; per_device_train_batch_size is derived from it"}


@dataclass
class Recipe:
    """A validated config: the recipe's own sections, the library configs' fields, and where it came from."""

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


def valid_keys() -> dict[str, dataclasses.Field | None]:
    """Every settable dotted key (``section.key``) and its dataclass field (None for top-level keys)."""
    keys: dict[str, dataclasses.Field | None] = {k: None for k in TOP_LEVEL_KEYS}
    for section, (own, extra) in _sections().items():
        if own is not None:
            keys.update({f"{section}.{f.name}": f for f in dataclasses.fields(own)})
        if extra is not None:
            keys.update({f"{section}.{name}": f for name, f in extra().items()})
    return keys


def _nearest(key: str, candidates: list[str]) -> str | None:
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


def _unknown_key_error(key: str, where: str, keys: list[str]) -> RecipeError:
    near = _nearest(key, keys)
    hint = f" Did you mean '{near}'?" if near else ""
    return RecipeError(f"Unknown config key '{key}' ({where}).{hint} `recipes/train.py --help-config` lists every key.")


def _flatten(config: Any, where: str, keys: dict) -> dict[str, Any]:
    """``{"sinks": {"p_mem": 0.3}}`` -> ``{"sinks.p_mem": 0.3}``, checking each key as it goes."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise RecipeError(f"{where}: the config is a YAML mapping of sections (model:, data:, training:, ...); "
                          f"got a {type(config).__name__}.")
    sections = _sections()
    flat: dict[str, Any] = {}
    for name, value in config.items():
        name = str(name)
        if name in TOP_LEVEL_KEYS:
            flat[name] = value
            continue
        if name not in sections:
            raise _unknown_key_error(name, where, list(TOP_LEVEL_KEYS) + list(sections) + list(keys))
        if value is None:
            continue
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: section '{name}' must be a mapping of keys, got {value!r}.")
        for key, item in value.items():
            dotted = f"{name}.{key}"
            if dotted not in keys:
                raise _unknown_key_error(dotted, where, list(keys))
            flat[dotted] = item
    return flat


def _parse_override(dotted: str, raw: str, keys: dict) -> tuple[str, Any]:
    """One ``--section.key value`` (or ``--model.config.n_layer 2``, into a dict-valued key)."""
    value = read_yaml(raw) if raw != "" else ""
    if dotted in keys:
        return dotted, value
    parent, _, sub = dotted.rpartition(".")
    if parent in keys and keys[parent] is not None and _base_type(keys[parent]) is dict and sub:
        return parent, {sub: value}
    raise _unknown_key_error(dotted, "command line", list(keys))


def _base_type(f: dataclasses.Field) -> Any:
    """The field's type with Optional removed, for coercion: int, float, bool, str, dict, list or None."""
    annotation = f.type
    if isinstance(annotation, str):
        annotation = {"int": int, "float": float, "bool": bool, "str": str, "dict": dict, "list": list}.get(
            annotation.split("|")[0].strip(), None)
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            annotation = args[0]
        else:
            return None
    origin = typing.get_origin(annotation) or annotation
    return origin if origin in (int, float, bool, str, dict, list) else None


def _coerce(dotted: str, value: Any, f: dataclasses.Field | None) -> Any:
    """Fix what YAML gets wrong (``1e-3`` is a string in YAML 1.1) and refuse values of the wrong type."""
    if f is None or value is None:
        return value
    kind = _base_type(f)
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is bool and isinstance(value, str) and value.lower() in _BOOLEAN_WORDS:
        return _BOOLEAN_WORDS[value.lower()]
    ok = kind is None or isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if not ok:
        raise RecipeError(f"Config key '{dotted}' must be a {kind.__name__}; got {value!r}.")
    return value


def parse_command_line(argv: list[str]) -> tuple[str | None, list[tuple[str, str]], dict]:
    """Split argv into the config file, the ``--section.key value`` overrides and the flags."""
    config_path, overrides, flags = None, [], {"resume": None, "help_config": False, "print_config": False,
                                                "help": False}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            flags["help"] = True
        elif arg == "--help-config":
            flags["help_config"] = True
        elif arg == "--print-config":
            flags["print_config"] = True
        elif arg == "--config" or arg.startswith("--config="):
            if "=" in arg:
                config_path = arg.split("=", 1)[1]
            else:
                if i + 1 >= len(argv):
                    raise RecipeError("--config needs a YAML file, e.g. --config recipes/configs/pretrain_cpu.yaml.")
                config_path = argv[i + 1]
                i += 1
        elif arg == "--resume" or arg.startswith("--resume="):
            if "=" in arg:
                flags["resume"] = arg.split("=", 1)[1]
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                flags["resume"] = argv[i + 1]
                i += 1
            else:
                flags["resume"] = True
        elif arg.startswith("--") and len(arg) > 2:
            key, eq, raw = arg[2:].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise RecipeError(f"{arg} needs a value, e.g. {arg} 0.3 (or {arg}=0.3).")
                raw = argv[i + 1]
                i += 1
            overrides.append((key, raw))
        else:
            raise RecipeError(f"Unexpected argument {arg!r}. Use --config FILE, --section.key VALUE, --resume [DIR], "
                              "--help-config or --print-config.")
        i += 1
    return config_path, overrides, flags


def load_recipe(config_path: str | None, overrides: list[tuple[str, str]] = ()) -> Recipe:
    """Read the YAML file, apply the overrides, check every key and value; raises RecipeError."""
    keys = valid_keys()
    flat: dict[str, Any] = {}
    where = "no config file"
    if config_path is not None:
        if not os.path.isfile(config_path):
            raise RecipeError(f"Config file {config_path} does not exist; the recipes' configs are in "
                              "recipes/configs/.")
        where = config_path
        with open(config_path, encoding="utf-8") as f:
            try:
                loaded = read_yaml(f)
            except yaml.YAMLError as err:
                raise RecipeError(f"{config_path} is not valid YAML: {err}") from None
        flat.update(_flatten(loaded, where, keys))
    for dotted, raw in overrides:
        key, value = _parse_override(dotted, raw, keys)
        if isinstance(value, dict) and isinstance(flat.get(key), dict) and key != dotted:
            value = {**flat[key], **value}
        flat[key] = value
    flat = {k: _coerce(k, v, keys[k]) for k, v in flat.items()}
    return _build_recipe(flat, where)


def _build_recipe(flat: dict[str, Any], where: str) -> Recipe:
    scenario = flat.get("scenario", "pretrain")
    if scenario not in SCENARIOS:
        near = difflib.get_close_matches(str(scenario), SCENARIOS, n=1)
        raise RecipeError(f"scenario must be one of {SCENARIOS}; got {scenario!r}"
                          + (f" (did you mean '{near[0]}'?)." if near else "."))

    def section(name: str) -> dict:
        return {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith(name + ".")}

    def own(name: str, cls: type) -> tuple[Any, dict]:
        values = section(name)
        names = {f.name for f in dataclasses.fields(cls)}
        mine = {k: v for k, v in values.items() if k in names}
        return cls(**mine), {k: v for k, v in values.items() if k not in names}

    model, _ = own("model", ModelArguments)
    data, _ = own("data", DataArguments)
    sinks, sinks_config = own("sinks", SinksArguments)
    lora, _ = own("lora", LoraArguments)
    privacy, privacy_config = own("privacy", PrivacyArguments)
    probes, _ = own("probes", ProbeArguments)
    export, _ = own("export", ExportArguments)
    training = section("training")
    gbs = flat.get("global_batch_size")
    if gbs is not None and (isinstance(gbs, bool) or not isinstance(gbs, int) or gbs < 1):
        raise RecipeError(f"global_batch_size must be a positive int; got {gbs!r}.")
    if not training.get("output_dir"):
        raise RecipeError(f"{where}: training.output_dir is not set; name the run's directory, e.g. "
                          "--training.output_dir runs/my_run.")
    if sinks.placement is None:
        sinks.placement = "split" if scenario == "pretrain" else "append"
    recipe = Recipe(scenario=scenario, model=model, data=data, sinks=sinks, sinks_config=sinks_config, lora=lora,
                    privacy=privacy, privacy_config=privacy_config, probes=probes, export=export, training=training,
                    global_batch_size=gbs, source=where)
    _check_recipe(recipe)
    return recipe


def _check_recipe(r: Recipe) -> None:
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
        if getattr(d, name) < 1:
            raise RecipeError(f"data.{name} must be at least 1; got {getattr(d, name)}.")
    for name in ("n_repeated", "n_heldout", "n_canaries"):
        if getattr(d, name) < 0:
            raise RecipeError(f"data.{name} must be >= 0; got {getattr(d, name)}.")
    if d.source != "embedded" and looks_like_path(d.source) and not os.path.exists(os.path.expanduser(d.source)):
        raise RecipeError(f"data.source {d.source} does not exist. Give a .txt or .jsonl file, a directory saved with "
                          "datasets' save_to_disk, a datasets name, or 'embedded' for the built-in corpus.")
    if d.id_column is not None and r.scenario == "pretrain":
        raise RecipeError("data.id_column is for finetune; pretraining gives each window the hash of its tokens.")
    if d.id_column is not None and d.source == "embedded":
        raise RecipeError("data.id_column names a column of your data, but data.source is 'embedded' (no columns).")
    if r.sinks.enabled:
        try:
            memsinks.SinksConfig(placement=r.sinks.placement, **r.sinks_config)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"sinks: {err}") from None
    if r.privacy.enabled:
        try:
            privacy_config(r)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"privacy: {err}") from None
    if r.probes.enabled:
        unknown = sorted(set(r.probes.probes) - set(PROBE_NAMES))
        if unknown:
            raise RecipeError(f"probes.probes has unknown probes {unknown}; choose from {', '.join(PROBE_NAMES)}.")


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
            near = _nearest(str(key), sorted(known))
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


def config_help() -> str:
    """Every key with its default and meaning, for ``--help-config``."""
    lines = ["Top level:"]
    lines += [f"  {k:<34} {v}" for k, v in TOP_LEVEL_KEYS.items()]
    for section, (own, extra) in _sections().items():
        lines.append(f"{section}:")
        if own is not None:
            for f in dataclasses.fields(own):
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                lines.append(f"  {f.name:<34} {f.metadata.get('help', '')} (default {default!r})")
        if section == "sinks":
            lines.append("  + every memsinks.SinksConfig field: " + ", ".join(_sinks_config_fields()))
        elif section == "privacy":
            lines.append("  + every memsinks.PrivacyConfig field: " + ", ".join(_privacy_config_fields()))
        elif section == "training":
            lines.append("  every transformers.TrainingArguments field (output_dir, learning_rate, max_steps, ...)")
    return "\n".join(lines)
