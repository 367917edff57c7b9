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
    assert (a.memorized_threshold, a.memorized_missed_only, a.layers, a.routes_memorized) == (1.0, True, "auto", True)
    s = SinksConfig()
    assert (s.sink_lr_scale, s.sink_init, s.centered_masks, s.sink_warmup_steps) == (1.0, None, False, 0)
    assert (s.memorized_threshold, s.memorized_missed_only, s.routes_memorized) == (0.0, False, False)
    off = SinksConfig(placement="append", n_sink_units=8, memorized_threshold=0)
    assert (off.memorized_threshold, off.memorized_missed_only, off.routes_memorized) == (0.0, False, False)
    assert SinksConfig(placement="append", n_sink_units=8, memorized_missed_only=False).memorized_threshold == 1.0


def test_auto_layers_are_the_top_third_with_routing_and_every_block_without():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from finetune_lib import arms

    a = SinksConfig(placement="append", n_sink_units=8)
    assert a.auto_layers(30) == list(range(20, 30))  # SmolLM2-135M: the last 10 of 30
    assert a.auto_layers(2) == [1] and a.auto_layers(4) == [2, 3] and a.auto_layers(1) == [0]
    assert SinksConfig(placement="append", n_sink_units=8, memorized_threshold=0).auto_layers(30) is None
    assert SinksConfig().auto_layers(30) is None
    # what the benchmark measured as sinks_memorized_top10_missed is what the defaults are on a 30-block model
    defaults, measured = (SinksConfig(**arms.ARMS[name].sinks) for name in ("sinks_defaults",
                                                                          "sinks_memorized_top10_missed"))
    defaults.layers = defaults.auto_layers(30)
    measured.layers = [30 + i for i in measured.layers]
    assert defaults == measured
    with pytest.raises(ValueError, match="'auto'; got 'top'"):
        SinksConfig(placement="append", n_sink_units=8, layers="top")


def test_a_marked_tokens_target_that_the_routed_step_would_ignore_is_refused():
    with pytest.raises(ValueError, match="private_token_target='batch_marginal'.*Set memorized_threshold=0"):
        SinksConfig(placement="append", n_sink_units=8, private_token_target="batch_marginal")
    kept = SinksConfig(placement="append", n_sink_units=8, private_token_target="batch_marginal", memorized_threshold=0)
    assert kept.private_token_target == "batch_marginal"


def test_add_sinks_writes_the_blocks_auto_chose_into_the_models_config():
    from tests.conftest import tiny_model

    model = memsinks.add_sinks(tiny_model("llama", layers=3), SinksConfig(placement="append", n_sink_units=8))
    assert memsinks.get_sinks_config(model).layers == [2]
    unrouted = SinksConfig(placement="append", n_sink_units=8, memorized_threshold=0)
    assert memsinks.get_sinks_config(memsinks.add_sinks(tiny_model("llama", layers=3), unrouted)).layers is None


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
    for key in ("sink_lr_scale", "sink_init", "centered_masks", "sink_warmup_steps", "memorized_threshold",
                "memorized_missed_only", "layers"):
        del saved[key]
    old = SinksConfig.from_dict(saved)
    assert (old.sink_lr_scale, old.sink_init, old.centered_masks, old.sink_warmup_steps) == (1.0, "zero", False, 0)
    assert (old.memorized_threshold, old.memorized_missed_only, old.layers) == (0.0, False, None)
    # before routing was the append default, a file held null for off; a saved config now always holds a number
    routed = SinksConfig.from_dict({**SinksConfig(placement="append", n_sink_units=8).to_dict(),
                                    "memorized_threshold": None, "memorized_missed_only": False, "layers": None})
    assert (routed.routes_memorized, routed.layers) == (False, None)
    assert SinksConfig.from_dict(SinksConfig(placement="append", n_sink_units=8).to_dict()).memorized_threshold == 1.0
    split = SinksConfig().to_dict()
    for key in ("sink_lr_scale", "sink_init", "centered_masks", "sink_warmup_steps"):
        del split[key]
    assert SinksConfig.from_dict(split).sink_init is None
