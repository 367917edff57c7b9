"""SinksConfig: validated on creation, documented field by field."""

import pytest

import memsinks
from memsinks.config import SinksConfig


def test_bad_configs():
    with pytest.raises(ValueError, match="p_mem"):
        memsinks.SinksConfig(p_mem=0.0)
    with pytest.raises(ValueError, match="p_gen"):
        memsinks.SinksConfig(p_gen=1.5)
    with pytest.raises(ValueError, match="n_sink_units"):
        memsinks.SinksConfig(placement="append")


def test_every_field_is_documented_in_its_metadata():
    import dataclasses

    fields = dataclasses.fields(memsinks.SinksConfig)
    assert {f.name for f in fields} >= {"p_gen", "p_mem", "placement", "n_sink_units", "routing_seed"}
    for f in fields:
        help_text = f.metadata.get("help")
        assert isinstance(help_text, str) and len(help_text) > 20, f.name
    placement = next(f for f in fields if f.name == "placement")
    assert "'split'" in placement.metadata["help"] and "'append'" in placement.metadata["help"]


def test_append_defaults_are_the_measured_levers_and_split_keeps_the_papers_routing():
    a = SinksConfig(placement="append", n_sink_units=8)
    assert (a.sink_lr_scale, a.sink_init, a.centered_masks, a.sink_warmup_steps) == (32.0, "mirror", True, 8)
    s = SinksConfig()
    assert (s.sink_lr_scale, s.sink_init, s.centered_masks, s.sink_warmup_steps) == (1.0, None, False, 0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sink_lr_scale=30), "power of two.*got 30. Use 32"),
    (dict(sink_lr_scale=0), "power of two"),
    (dict(sink_init="ones"), "sink_init must be one of"),
    (dict(n_sink_units=7), "n_sink_units must be even; got 7"),
    (dict(centered_masks="yes"), "centered_masks must be True or False"),
    (dict(sink_warmup_steps=-1), "sink_warmup_steps must be an int >= 0"),
])
def test_bad_lever_values_are_refused_with_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SinksConfig(**{"placement": "append", "n_sink_units": 8, **kwargs})


def test_split_refuses_the_lever_only_appended_units_have_and_takes_a_power_of_two_learning_rate_scale():
    with pytest.raises(ValueError, match="sink_init applies to placement='append'"):
        SinksConfig(sink_init="mirror")
    assert SinksConfig(sink_lr_scale=4).sink_lr_scale == 4.0
    with pytest.raises(ValueError, match="power of two.*got 3. Use 4"):
        SinksConfig(sink_lr_scale=3)


def test_a_file_written_before_the_levers_existed_loads_with_that_versions_behaviour():
    saved = SinksConfig(placement="append", n_sink_units=8).to_dict()
    for key in ("sink_lr_scale", "sink_init", "centered_masks", "sink_warmup_steps"):
        del saved[key]
    old = SinksConfig.from_dict(saved)
    assert (old.sink_lr_scale, old.sink_init, old.centered_masks, old.sink_warmup_steps) == (1.0, "zero", False, 0)
    split = SinksConfig().to_dict()
    for key in ("sink_lr_scale", "sink_init", "centered_masks", "sink_warmup_steps"):
        del split[key]
    assert SinksConfig.from_dict(split).sink_init is None
