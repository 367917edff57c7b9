"""Bad sinks configs: damaged or wrong sinks_config.json files, bad fields, wrong architecture names, a reused config.

Each case asserts the exception type and that the message names the offending file, field
or name; file cases also assert that every input file is byte-identical afterwards.
"""

import json

import pytest
import torch

import memsinks
from memsinks.architectures import _REGISTRY
from tests.bad_input.conftest import files_unchanged
from tests.conftest import tiny_model


@pytest.fixture
def saved_config(tmp_path):
    memsinks.SinksConfig(p_gen=0.5, base_intermediate_size=64, model_type="gpt2").save_pretrained(tmp_path)
    return tmp_path / "sinks_config.json"


@pytest.mark.parametrize("content,fragment", [
    (b"", "empty (0 bytes)"),
    (b"   \n", "empty (4 bytes)"),
    (b'{"p_gen": 0.5, "placem', "not valid JSON"),
    (b"[1, 2]", "holds an array"),
    (b'"split"', "holds a string"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8"),
])
def test_a_damaged_sinks_config_file_is_named_and_left_alone(saved_config, content, fragment):
    saved_config.write_bytes(content)
    with files_unchanged(saved_config.parent), pytest.raises(ValueError) as info:
        memsinks.SinksConfig.from_pretrained(saved_config.parent)
    assert str(saved_config) in str(info.value) and "damaged" in str(info.value) and fragment in str(info.value)


@pytest.mark.parametrize("field,value,error", [
    ("p_gen", "0.5", ValueError),
    ("base_intermediate_size", 64.0, ValueError),
    ("layers", [0, 1.0], ValueError),
    ("exclude_ids", [1.5], TypeError),
    ("model_type", 7, ValueError),
    ("routing_seed", True, ValueError),
])
def test_a_bad_field_in_the_file_is_named_with_the_file(saved_config, field, value, error):
    data = json.loads(saved_config.read_text())
    data[field] = value
    saved_config.write_text(json.dumps(data))
    with files_unchanged(saved_config.parent), pytest.raises(error) as info:
        memsinks.SinksConfig.from_pretrained(saved_config.parent)
    assert str(saved_config) in str(info.value) and field in str(info.value)


def test_a_misspelled_field_in_the_file_gets_a_hint(saved_config):
    data = json.loads(saved_config.read_text())
    data["routing_sed"] = data.pop("routing_seed")
    saved_config.write_text(json.dumps(data))
    with files_unchanged(saved_config.parent), pytest.raises(ValueError) as info:
        memsinks.SinksConfig.from_pretrained(saved_config.parent)
    assert str(saved_config) in str(info.value) and "did you mean 'routing_seed'" in str(info.value)


def test_a_damaged_privacy_config_file_is_named_too(tmp_path):
    memsinks.PrivacyConfig(target_epsilon=3).save_pretrained(tmp_path)
    path = tmp_path / "privacy_config.json"
    path.write_bytes(path.read_bytes()[:20])
    with files_unchanged(tmp_path), pytest.raises(ValueError) as info:
        memsinks.PrivacyConfig.from_pretrained(tmp_path)
    assert str(path) in str(info.value) and "not valid JSON" in str(info.value)


def _phi():
    from transformers import PhiConfig, PhiForCausalLM

    return PhiForCausalLM(PhiConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=48))


@pytest.mark.parametrize("names,missing,present", [
    (dict(blocks="model.layers", up="fc1", down="fc2", mlp="ffn"), "'ffn'", "PhiDecoderLayer holds"),
    (dict(blocks="model.layers", up=("fc1", "fc9"), down="fc2"), "'mlp.fc9'", "'fc1', 'fc2'"),
    (dict(blocks="model.layers", up="fc1", down="fc3"), "'mlp.fc3'", "'fc1', 'fc2'"),
    (dict(blocks="model.blocks", up="fc1", down="fc2"), "'model.blocks'", "missing 'blocks'"),
])
def test_registered_names_that_do_not_exist_are_named_and_the_model_is_left_alone(names, missing, present):
    model = _phi()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    memsinks.register_architecture("phi", **names)
    try:
        with pytest.raises(ValueError) as info:
            memsinks.add_sinks(model, memsinks.SinksConfig(placement="append", n_sink_units=8))
    finally:
        _REGISTRY.pop("phi")
    assert missing in str(info.value) and present in str(info.value)
    assert not memsinks.has_sinks(model) and "forward" not in model.__dict__
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()) and len(model.state_dict()) == len(before)


def test_one_config_serves_models_of_two_families_and_is_not_changed():
    cfg = memsinks.SinksConfig(placement="append", n_sink_units=8, routing_seed=5)
    gpt2 = memsinks.add_sinks(tiny_model("gpt2", inner=64), cfg)
    llama = memsinks.add_sinks(tiny_model("llama", inner=96), cfg)
    assert cfg == memsinks.SinksConfig(placement="append", n_sink_units=8, routing_seed=5)  # untouched
    a, b = memsinks.get_sinks_config(gpt2), memsinks.get_sinks_config(llama)
    assert (a.model_type, a.base_intermediate_size) == ("gpt2", 64)
    assert (b.model_type, b.base_intermediate_size) == ("llama", 96)
    assert a is not cfg and b is not cfg and a.routing_seed == b.routing_seed == 5


def test_a_non_config_is_refused_by_type():
    with pytest.raises(TypeError, match="SinksConfig, got dict"):
        memsinks.add_sinks(tiny_model("gpt2"), {"placement": "split"})
