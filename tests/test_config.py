"""SinksConfig: validated on creation, documented field by field."""

import pytest

import memsinks


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
