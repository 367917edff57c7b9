"""Reading the recipe's YAML file and ``--section.key value`` overrides into a ``Recipe``, with ``HfArgumentParser``.

Each section of the config has a ``transformers.HfArgumentParser`` built from its dataclasses
(``config.py``; ``sinks``, ``privacy`` and ``training`` also from ``memsinks.SinksConfig``,
``memsinks.PrivacyConfig`` and ``transformers.TrainingArguments``): it defines every key, its
type, default and help. As in trl's scripts, the file's values and the overrides become the
parser's defaults and the parser types them: a string is converted by the key's type (a bad
one is an error naming ``section.key``), YAML's own lists, mappings and nulls are taken as they
are. Values are read as YAML 1.2, on the command line too (``--sinks.layers [0,1]``). A key
that does not exist is an error naming the nearest valid key (the same key in another section
first, then the closest spelling), because a silently ignored typo would train something other
than what the user asked for.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import os
import re
import typing
from typing import Any

import yaml
from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from memsinks_recipe.common import RecipeError
from memsinks_recipe.config import (
    SCENARIOS, DataArguments, ExportArguments, LoraArguments, ModelArguments, PrivacyArguments, ProbeArguments, Recipe,
    RunArguments, SinksArguments, check_recipe, nearest_key,
)

TOP = ""  # the section of the top-level keys
INTERNAL_SINKS_FIELDS = {"base_intermediate_size", "model_type", "hash_scheme"}  # add_sinks fills them in


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


def _to_bool(value: str) -> bool:
    """HfArgumentParser's words for true and false, and on/off."""
    if value.lower() in ("on", "off"):
        return value.lower() == "on"
    try:
        return string_to_bool(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be true or false; got {value!r}") from None


def _sections() -> dict[str, tuple[type | None, type | None]]:
    """Section name -> (the recipe's own dataclass, the library dataclass whose fields it also takes)."""
    from transformers import TrainingArguments

    import memsinks

    return {TOP: (RunArguments, None), "model": (ModelArguments, None), "data": (DataArguments, None),
            "sinks": (SinksArguments, memsinks.SinksConfig), "lora": (LoraArguments, None),
            "privacy": (PrivacyArguments, memsinks.PrivacyConfig), "probes": (ProbeArguments, None),
            "export": (ExportArguments, None), "training": (None, TrainingArguments)}


class SectionParser(HfArgumentParser):
    """The keys of one section, defined by HfArgumentParser from its dataclasses; ``parse`` types a section's values.

    A library field the recipe's dataclass already defines (``sinks.placement``) and
    ``SinksConfig``'s internal fields are left out; fields are copied, so that the library's
    dataclasses keep their own field types, and only their help text is passed on to argparse.
    """

    def __init__(self, section: str, own: type | None, library: type | None):
        self.section, self.own, self.library = section, own, library
        self.own_keys = {f.name for f in dataclasses.fields(own)} if own is not None else set()
        self.text_keys: set[str] = set()  # keys whose field also takes a string (TrainingArguments' str | list)
        types = [t for t in (own, library) if t is not None]
        super().__init__(types, prog=section or "recipe", add_help=False, allow_abbrev=False)
        for action in self._actions:
            if action.type is string_to_bool:
                action.type = _to_bool
        self.keys: dict[str, argparse.Action] = {}  # key -> its argument (not the --no_<key> complement after it)
        for action in self._actions:
            self.keys.setdefault(action.dest, action)

    def _add_dataclass_arguments(self, dtype) -> None:
        hints = typing.get_type_hints(dtype)
        for f in dataclasses.fields(dtype):
            if not f.init or f.name in INTERNAL_SINKS_FIELDS or f"--{f.name}" in self._option_string_actions:
                continue
            f = copy.copy(f)
            f.type = hints[f.name]
            if str in typing.get_args(f.type):
                self.text_keys.add(f.name)
            f.metadata = {"help": f.metadata["help"]} if f.metadata.get("help") else {}
            self._parse_dataclass_field(self, f)

    def dotted(self, key: str) -> str:
        return f"{self.section}.{key}" if self.section else key

    def error(self, message: str):
        """argparse's message about a value, as a RecipeError naming the key."""
        match = re.match(r"argument --([^/:\s]+)\S*: (.*)", message)
        if match is None:
            raise RecipeError(f"{self.section or 'config'}: {message}")
        key, problem = match.groups()
        kind = re.match(r"invalid (\w+) value: (.*)", problem)
        if kind is not None:
            article = "an" if kind.group(1)[0] in "aeiou" else "a"
            problem = f"must be {article} {kind.group(1)}; got {kind.group(2)}"
        raise RecipeError(f"Config key '{self.dotted(key)}' {problem}.")

    def parse(self, values: dict[str, Any]) -> argparse.Namespace:
        """Every key of the section, typed: ``values`` (already checked to be keys) over the defaults."""
        for key, value in values.items():
            action = self.keys[key]
            if action.nargs == "+" and not isinstance(value, list) and value is not None and key not in self.text_keys:
                raise RecipeError(f"Config key '{self.dotted(key)}' must be a list; got {value!r}.")
            if isinstance(value, (bool, int, float)) and action.nargs != "+":
                value = str(value)  # typed by the key's type like a command-line value: 1.5 is no int
            self.set_defaults(**{key: value})
        namespace, _ = self.parse_known_args([])
        return namespace


def _parsers() -> dict[str, SectionParser]:
    return {name: SectionParser(name, own, library) for name, (own, library) in _sections().items()}


def valid_keys(parsers: dict[str, SectionParser] | None = None) -> list[str]:
    """Every settable dotted key (``section.key``), the top-level keys first."""
    parsers = parsers or _parsers()
    return [p.dotted(key) for p in parsers.values() for key in p.keys]


def _unknown_key_error(key: str, where: str, keys: list[str]) -> RecipeError:
    near = nearest_key(key, keys)
    hint = f" Did you mean '{near}'?" if near else ""
    return RecipeError(f"Unknown config key '{key}' ({where}).{hint} `recipes/train.py --help-config` lists every key.")


def _read_file(config_path: str, parsers: dict[str, SectionParser]) -> dict[str, dict]:
    """The file's values per section, every key checked."""
    if not os.path.isfile(config_path):
        raise RecipeError(f"Config file {config_path} does not exist; the recipes' configs are in recipes/configs/.")
    with open(config_path, encoding="utf-8") as f:
        try:
            loaded = read_yaml(f)
        except yaml.YAMLError as err:
            raise RecipeError(f"{config_path} is not valid YAML: {err}") from None
    values: dict[str, dict] = {name: {} for name in parsers}
    if loaded is None:
        return values
    if not isinstance(loaded, dict):
        raise RecipeError(f"{config_path}: the config is a YAML mapping of sections (model:, data:, training:, ...); "
                          f"got a {type(loaded).__name__}.")
    keys = valid_keys(parsers)
    for name, value in loaded.items():
        name = str(name)
        if name in parsers[TOP].keys:
            values[TOP][name] = value
        elif name not in parsers or name == TOP:
            raise _unknown_key_error(name, config_path, [n for n in parsers if n] + keys)
        elif value is not None:
            if not isinstance(value, dict):
                raise RecipeError(f"{config_path}: section '{name}' must be a mapping of keys, got {value!r}.")
            for key, item in value.items():
                if str(key) not in parsers[name].keys:
                    raise _unknown_key_error(f"{name}.{key}", config_path, keys)
                values[name][str(key)] = item
    return values


def _apply_override(values: dict[str, dict], dotted: str, raw: str, parsers: dict[str, SectionParser]) -> None:
    """One ``--section.key value`` (or ``--model.config.n_layer 2``, into a mapping-valued key); ``raw`` is YAML."""
    value = read_yaml(raw) if raw != "" else ""
    section, _, rest = dotted.partition(".") if "." in dotted else (TOP, "", dotted)
    key, _, sub = rest.partition(".")
    action = parsers[section].keys.get(key) if section in parsers else None
    if action is not None and not sub:
        values[section][key] = value
    elif action is not None and action.type is dict:
        current = values[section].get(key)
        values[section][key] = {**(current if isinstance(current, dict) else {}), sub: value}
    else:
        raise _unknown_key_error(dotted, "command line", valid_keys(parsers))


def load_recipe(config_path: str | None, overrides: list[tuple[str, str]] = ()) -> Recipe:
    """Read the YAML file, apply the overrides, check every key and value; raises RecipeError."""
    parsers = _parsers()
    values = _read_file(config_path, parsers) if config_path is not None else {name: {} for name in parsers}
    for dotted, raw in overrides:
        _apply_override(values, dotted, raw, parsers)
    run = parsers[TOP].parse(values[TOP])
    if run.scenario not in SCENARIOS:
        near = difflib.get_close_matches(str(run.scenario), SCENARIOS, n=1)
        raise RecipeError(f"scenario must be one of {SCENARIOS}; got {run.scenario!r}"
                          + (f" (did you mean '{near[0]}'?)." if near else "."))
    if run.global_batch_size is not None and run.global_batch_size < 1:
        raise RecipeError(f"global_batch_size must be a positive int; got {run.global_batch_size!r}.")
    sections: dict[str, Any] = {}
    given: dict[str, dict] = {}
    for name, parser in parsers.items():
        if name == TOP:
            continue
        namespace = parser.parse(values[name])
        if parser.own is not None:
            sections[name] = parser.own(**{k: getattr(namespace, k) for k in parser.own_keys})
        given[name] = {k: getattr(namespace, k) for k in values[name] if k not in parser.own_keys}
    where = config_path or "no config file"
    if not given["training"].get("output_dir"):
        raise RecipeError(f"{where}: training.output_dir is not set; name the run's directory, e.g. "
                          "--training.output_dir runs/my_run.")
    if sections["sinks"].placement is None:
        sections["sinks"].placement = "split" if run.scenario == "pretrain" else "append"
    recipe = Recipe(scenario=run.scenario, model=sections["model"], data=sections["data"], sinks=sections["sinks"],
                    sinks_config=given["sinks"], lora=sections["lora"], privacy=sections["privacy"],
                    privacy_config=given["privacy"], probes=sections["probes"], export=sections["export"],
                    training=given["training"], global_batch_size=run.global_batch_size, source=where)
    check_recipe(recipe)
    return recipe


def config_help() -> str:
    """Every key with its meaning and default, for ``--help-config``; the library configs' keys carry their own
    fields' help (``metadata["help"]``), ``TrainingArguments``' are summed up in one line."""
    lines = []
    for name, parser in _parsers().items():
        lines.append(f"{name}:" if name else "Top level:")
        if parser.own is None:
            lines.append(f"  every transformers.{parser.library.__name__} field (output_dir, learning_rate, max_steps, "
                         "...)")
            continue
        for key, action in parser.keys.items():
            if key not in parser.own_keys and key == next(k for k in parser.keys if k not in parser.own_keys):
                lines.append(f"  + the fields of memsinks.{parser.library.__name__}:")
            meaning = f"{action.help} " if action.help else ""
            lines.append(f"  {key:<34} {meaning}(default {action.default!r})")
    return "\n".join(lines)


def parse_command_line(argv: list[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    """The script's own flags, and the ``--section.key value`` overrides (in order) from the rest of ``argv``."""

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str):
            raise RecipeError(message)

    p = _Parser(prog="train.py", add_help=False, allow_abbrev=False)
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("--config")
    p.add_argument("--resume", nargs="?", const=True, default=None)
    p.add_argument("--print-config", action="store_true")
    p.add_argument("--help-config", action="store_true")
    flags, rest = p.parse_known_args(argv)
    overrides = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise RecipeError(f"Unexpected argument {arg!r}. Use --config FILE, --section.key VALUE, --resume [DIR], "
                              "--help-config or --print-config.")
        key, eq, raw = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(rest):
                raise RecipeError(f"{arg} needs a value, e.g. {arg} 0.3 (or {arg}=0.3).")
            raw = rest[i + 1]
            i += 1
        overrides.append((key, raw))
        i += 1
    return flags, overrides
