"""recipes/memsinks_recipe/arguments.py: keys and values typed by HfArgumentParser, the help, the command line.

The refusals of whole configs are in test_config.py; here the parts: how a value of each kind of
key is read, that the library's dataclasses are left as they are, what --help-config shows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

import memsinks
from tests.recipes.helpers import tiny_pretrain_config, write_config

from memsinks_recipe.arguments import SectionParser, config_help, load_recipe, parse_command_line  # noqa: E402
from memsinks_recipe.common import RecipeError  # noqa: E402


@dataclass
class _Own:
    enabled: bool = field(default=True, metadata={"help": "switch it on"})
    sizes: list[int] = field(default_factory=lambda: [1])


@dataclass
class _Library:
    rate: float = field(default=0.5, metadata={"help": "how fast", "unknown_to_argparse": 1})
    steps: int | None = None
    enabled: bool = False  # the recipe's own key of the same name wins


def test_values_are_typed_by_their_key_and_bad_ones_name_the_key():
    parser = SectionParser("demo", _Own, _Library)
    assert list(parser.keys) == ["enabled", "sizes", "rate", "steps"]
    ns = parser.parse({"enabled": "off", "sizes": [2, 3], "rate": 1, "steps": "7"})
    assert (ns.enabled, ns.sizes, ns.rate, ns.steps) == (False, [2, 3], 1.0, 7)
    assert isinstance(ns.rate, float)
    for word, value in (("on", True), ("yes", True), ("no", False), ("true", True), (False, False)):
        assert SectionParser("demo", _Own, _Library).parse({"enabled": word}).enabled is value
    for values, message in (({"steps": 1.5}, "'demo.steps' must be an int; got '1.5'"),
                            ({"rate": "fast"}, "'demo.rate' must be a float; got 'fast'"),
                            ({"enabled": "maybe"}, "'demo.enabled' must be true or false; got 'maybe'"),
                            ({"sizes": 2}, "'demo.sizes' must be a list; got 2")):
        with pytest.raises(RecipeError, match=message):
            SectionParser("demo", _Own, _Library).parse(values)


def test_the_library_dataclasses_keep_their_own_field_types():
    before = {f.name: f.type for f in dataclasses.fields(memsinks.SinksConfig)}
    SectionParser("sinks", None, memsinks.SinksConfig).parse({"p_mem": "0.2"})
    assert {f.name: f.type for f in dataclasses.fields(memsinks.SinksConfig)} == before


def test_help_config_lists_every_library_field_with_its_help_where_it_has_one():
    text = config_help()
    sinks = text[text.index("\nsinks:"):text.index("\nlora:")]
    fields = [f for f in dataclasses.fields(memsinks.SinksConfig)  # placement: the recipe's own key (by scenario)
              if f.name not in ("placement", "base_intermediate_size", "model_type", "hash_scheme")]
    for f in fields:
        line = next(line for line in sinks.splitlines() if line.split()[:1] == [f.name])
        assert f"(default {f.default if f.default is not dataclasses.MISSING else f.default_factory()!r})" in line
        if f.metadata.get("help"):
            assert f.metadata["help"] in line
    privacy = text[text.index("\nprivacy:"):text.index("\nprobes:")]
    for f in dataclasses.fields(memsinks.PrivacyConfig):
        assert any(line.split()[:1] == [f.name] for line in privacy.splitlines()), f.name
    assert "  window " in text and "  source " in text and "every transformers.TrainingArguments field" in text


def test_the_command_line_splits_the_scripts_flags_from_the_overrides():
    flags, overrides = parse_command_line(["--config", "c.yaml", "--resume", "--sinks.p_mem", "0.2",
                                           "--training.learning_rate=-1e-3", "--global_batch_size", "8"])
    assert (flags.config, flags.resume, flags.print_config) == ("c.yaml", True, False)
    assert overrides == [("sinks.p_mem", "0.2"), ("training.learning_rate", "-1e-3"), ("global_batch_size", "8")]
    flags, _ = parse_command_line(["--resume", "runs/x/checkpoint-4", "--help-config"])
    assert flags.resume == "runs/x/checkpoint-4" and flags.help_config
    with pytest.raises(RecipeError, match="Unexpected argument 'c.yaml'"):
        parse_command_line(["c.yaml"])
    with pytest.raises(RecipeError, match="--sinks.p_mem needs a value"):
        parse_command_line(["--sinks.p_mem"])


def test_top_level_keys_and_mapping_keys_from_the_command_line(tmp_path):
    path = write_config(tmp_path / "c.yaml", tiny_pretrain_config(tmp_path / "run"))
    recipe = load_recipe(str(path), [("global_batch_size", "16"), ("model.config.n_head", "4"),
                                     ("probes.probes", "[extraction]")])
    assert recipe.global_batch_size == 16 and recipe.model.config["n_head"] == 4
    assert recipe.model.config["n_layer"] == 2 and recipe.probes.probes == ["extraction"]
    with pytest.raises(RecipeError, match="Config key 'global_batch_size' must be an int"):
        load_recipe(str(path), [("global_batch_size", "many")])
    with pytest.raises(RecipeError, match="Did you mean 'global_batch_size'"):
        load_recipe(str(path), [("global_batch", "16")])
