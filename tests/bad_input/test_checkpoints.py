"""Bad checkpoints for memsinks.from_pretrained and the peft resume: each refused by name, every input file untouched.

Covers: weights whose shapes the config files do not describe (an edited config.json), a
sinks_config.json that is not the one saved with the weights (edited or copied: the routing
record in config.json catches it, naming the field), damaged safetensors files and indexes,
and writes interrupted by a full disk.
"""

import errno
import json
import os
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model

import memsinks
from memsinks.errors import DamagedCheckpointError, WeightsMismatchError
from tests.bad_input.conftest import files_unchanged
from tests.conftest import tiny_model, token_batch


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Two checkpoints with sinks, saved once: {"split": dir, "append": dir}."""
    out = {}
    for placement in ("split", "append"):
        cfg = memsinks.SinksConfig(placement=placement, n_sink_units=16 if placement == "append" else None,
                                   p_gen=0.5, routing_seed=3, memorized_threshold=0)
        model = memsinks.add_sinks(tiny_model("gpt2", layers=3), cfg)
        out[placement] = tmp_path_factory.mktemp(placement)
        model.save_pretrained(out[placement])
    return out


def _copy(pristine, tmp_path, placement="split"):
    target = tmp_path / "ckpt"
    shutil.copytree(pristine[placement], target)
    return target


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _refused(ckpt, error, *fragments):
    with files_unchanged(ckpt), pytest.raises(error) as info:
        memsinks.from_pretrained(ckpt)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    return str(info.value)


def test_a_weight_shape_the_config_does_not_describe_is_refused_like_stock_transformers(pristine, tmp_path):
    ckpt = _copy(pristine, tmp_path)
    _edit_json(ckpt / "config.json", n_positions=128)  # the weights hold 256 positions
    _refused(ckpt, WeightsMismatchError, "transformer.wpe.weight", "(256, 32)", "(128, 32)")
    from transformers import AutoModelForCausalLM

    with files_unchanged(ckpt), pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForCausalLM.from_pretrained(ckpt)


def test_an_edited_vocabulary_is_refused_while_the_widened_mlps_still_load(pristine, tmp_path):
    ckpt = _copy(pristine, tmp_path, "append")  # its MLP tensors are wider than the base config: allowed
    _edit_json(ckpt / "config.json", vocab_size=120)
    message = _refused(ckpt, WeightsMismatchError, "transformer.wte.weight", "(128, 32)", "(120, 32)")
    assert "mlp" not in message


def test_tensors_the_config_does_not_have_are_refused(pristine, tmp_path):
    ckpt = _copy(pristine, tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    del config["memsinks_routing"]  # the record would name the missing block first
    config["n_layer"] = 2
    (ckpt / "config.json").write_text(json.dumps(config))
    _refused(ckpt, WeightsMismatchError, "tensor(s) the model does not have", "transformer.h.2.")


@pytest.mark.parametrize("field,value,saved", [("p_gen", 0.7, 0.5), ("routing_seed", 4, 3), ("p_mem", 0.5, 0.3),
                                                ("layers", [0, 1], None)])
def test_an_edited_split_sinks_config_is_refused_naming_the_field(pristine, tmp_path, field, value, saved):
    ckpt = _copy(pristine, tmp_path)
    _edit_json(ckpt / "sinks_config.json", **{field: value})
    _refused(ckpt, WeightsMismatchError, f"{field} is {value!r} there but was {saved!r}", "sinks_config.json")


def test_a_sinks_config_copied_from_another_run_is_refused(pristine, tmp_path):
    ckpt = _copy(pristine, tmp_path)
    other = tmp_path / "other"
    memsinks.SinksConfig(p_gen=0.5, routing_seed=11, base_intermediate_size=64, model_type="gpt2").save_pretrained(other)
    shutil.copy(other / "sinks_config.json", ckpt / "sinks_config.json")
    _refused(ckpt, WeightsMismatchError, "routing_seed is 11 there but was 3")


def test_an_edited_append_pool_is_refused_naming_n_sink_units(pristine, tmp_path):
    ckpt = _copy(pristine, tmp_path, "append")
    _edit_json(ckpt / "sinks_config.json", n_sink_units=8)
    _refused(ckpt, WeightsMismatchError, "n_sink_units is 8 there but was 16")


@pytest.mark.parametrize("field,value,saved", [("sink_lr_scale", 8.0, 32.0), ("sink_init", "zero", "mirror"),
                                                ("centered_masks", False, True)])
def test_an_edited_append_training_field_is_refused_naming_it(pristine, tmp_path, field, value, saved):
    """The stored sinks are the weights divided by sink_lr_scale; mirror pairs and centring decide the masks."""
    ckpt = _copy(pristine, tmp_path, "append")
    _edit_json(ckpt / "sinks_config.json", **{field: value})
    _refused(ckpt, WeightsMismatchError, f"{field} is {value!r} there but was {saved!r}")


def test_an_edited_routing_record_is_refused_as_damaged(pristine, tmp_path):
    ckpt = _copy(pristine, tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    config["memsinks_routing"]["fields"]["routing_seed"] = 4
    (ckpt / "config.json").write_text(json.dumps(config))
    _refused(ckpt, DamagedCheckpointError, "memsinks_routing", "config.json", "was edited")


def test_a_checkpoint_from_before_the_record_loads_with_a_warning(pristine, tmp_path, caplog):
    ckpt = _copy(pristine, tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    del config["memsinks_routing"]
    (ckpt / "config.json").write_text(json.dumps(config))
    with files_unchanged(ckpt), caplog.at_level("WARNING", logger="memsinks"):
        old = memsinks.from_pretrained(ckpt)
    assert "has no memsinks routing record" in caplog.text and str(ckpt / "config.json") in caplog.text
    new = memsinks.from_pretrained(pristine["split"])
    assert not hasattr(old.config, "memsinks_routing") and not hasattr(new.config, "memsinks_routing")
    x, ids = token_batch(), torch.tensor([1, 2, 3])
    with memsinks.sinks_mode(old, "own"), memsinks.sinks_mode(new, "own"):
        assert torch.equal(old(x, sequence_ids=ids).logits, new(x, sequence_ids=ids).logits)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _zero(path):
    path.write_bytes(b"")


def _garbage_header(path):
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32
    path.write_bytes(bytes(data))


def _appended(path):
    path.write_bytes(path.read_bytes() + b"\0" * 16)


@pytest.mark.parametrize("damage,fragment", [(_truncate, "truncated"), (_zero, "0 bytes"), (_garbage_header, "header"),
                                             (_appended, "appended")])
def test_a_damaged_safetensors_file_is_named(pristine, tmp_path, damage, fragment):
    ckpt = _copy(pristine, tmp_path)
    damage(ckpt / "model.safetensors")
    _refused(ckpt, DamagedCheckpointError, str(ckpt / "model.safetensors"), "is damaged", fragment)


@pytest.mark.parametrize("content,fragment", [(b"", "empty"), (b'{"n_layer": 3, "model_ty', "not valid JSON"),
                                               (b'["gpt2"]', "holds an array")])
def test_a_damaged_config_json_is_named(pristine, tmp_path, content, fragment):
    ckpt = _copy(pristine, tmp_path)
    (ckpt / "config.json").write_bytes(content)
    _refused(ckpt, ValueError, str(ckpt / "config.json"), "is damaged", fragment)


def test_a_damaged_shard_index_or_a_missing_shard_is_named(tmp_path):
    model = memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(p_gen=0.5))
    ckpt = tmp_path / "sharded"
    model.save_pretrained(ckpt, max_shard_size="20KB")
    index = ckpt / "model.safetensors.index.json"
    good = index.read_bytes()
    index.write_bytes(good[:len(good) // 2])
    _refused(ckpt, DamagedCheckpointError, str(index), "is damaged")
    index.write_text(json.dumps({"weight_map": {"a": "../elsewhere.safetensors"}}))
    _refused(ckpt, DamagedCheckpointError, str(index), "plain file names")
    index.write_bytes(good)
    shard = sorted(ckpt.glob("model-*.safetensors"))[-1]
    shard.rename(tmp_path / "moved")
    _refused(ckpt, FileNotFoundError, str(shard), "not copied completely")


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        memsinks.from_pretrained(tmp_path / "nowhere")


def _peft_with_sinks(seed=3):
    torch.manual_seed(0)
    peft_model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj"]))
    return memsinks.add_sinks(peft_model, memsinks.SinksConfig(placement="append", n_sink_units=16, routing_seed=seed,
                                                                  memorized_threshold=0))


def test_a_peft_resume_with_another_sinks_config_is_refused(tmp_path):
    saved = _peft_with_sinks(seed=3)
    saved.save_pretrained(tmp_path / "adapter")
    other = _peft_with_sinks(seed=4)
    with files_unchanged(tmp_path / "adapter"), pytest.raises(WeightsMismatchError) as info:
        other.load_adapter(tmp_path / "adapter", adapter_name="default")
    assert "routing_seed is 4 there but was 3" in str(info.value) and "sinks.safetensors" in str(info.value)


def test_a_damaged_peft_sinks_file_is_named(tmp_path):
    saved = _peft_with_sinks()
    saved.save_pretrained(tmp_path / "adapter")
    _truncate(tmp_path / "adapter" / "sinks.safetensors")
    with files_unchanged(tmp_path / "adapter"), pytest.raises(DamagedCheckpointError) as info:
        _peft_with_sinks().load_adapter(tmp_path / "adapter", adapter_name="default")
    assert str(tmp_path / "adapter" / "sinks.safetensors") in str(info.value)


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_leaves_the_old_sinks_config_and_no_temporary_file(tmp_path, monkeypatch):
    cfg = memsinks.SinksConfig(p_gen=0.5)
    cfg.save_pretrained(tmp_path)
    monkeypatch.setattr(os, "fsync", _disk_full)
    with files_unchanged(tmp_path), pytest.raises(OSError, match="No space left"):
        memsinks.SinksConfig(p_gen=0.6).save_pretrained(tmp_path)
    assert memsinks.SinksConfig.from_pretrained(tmp_path) == cfg


def test_a_full_disk_leaves_the_old_peft_sinks_file_and_no_temporary_file(tmp_path, monkeypatch):
    peft_model = _peft_with_sinks()
    peft_model.save_pretrained(tmp_path)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "sink_weight" in name:
                p.add_(1.0)
    before = (tmp_path / "sinks.safetensors").read_bytes()
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: _disk_full() if os.fstat(fd).st_size > 10_000 else real_fsync(fd))
    with pytest.raises(OSError, match="No space left"):
        peft_model.save_pretrained(tmp_path)
    assert (tmp_path / "sinks.safetensors").read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp") or p.stat().st_size == 0]
