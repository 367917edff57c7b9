"""save_pretrained / from_pretrained of models with sinks, and the checkpoint files they read."""

import json

import pytest
import torch

import memsinks
from memsinks.model import get_router
from tests.conftest import tiny_model, token_batch


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gpt2"])
@pytest.mark.parametrize("placement,config", [("split", {}), ("split", {"sink_lr_scale": 4}), ("append", {})],
                         ids=["split", "split_scaled", "append"])
def test_save_load_round_trip_keeps_routing_and_logits(tmp_path, placement, config, family):
    cfg = memsinks.SinksConfig(placement=placement, n_sink_units=16 if placement == "append" else None,
                               p_gen=0.5, routing_seed=99, layers=[0, -1], **config)

    def perturb(m):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)

    base = tiny_model(family, layers=3)
    if placement == "split":  # split sinks are the model's own units: its weights are the sinks' effective weights
        perturb(base)
        weights = {k: v.clone() for k, v in base.state_dict().items()}
    model = memsinks.add_sinks(base, cfg)
    if placement == "append":
        perturb(model)  # make the zero-initialised sink weights matter
    model.eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "sinks_config.json").read_text())
    assert saved["routing_seed"] == 99 and saved["layers"] == [0, -1]
    loaded = memsinks.from_pretrained(tmp_path)
    x = token_batch()
    ids = torch.tensor([10, 20, 30])
    for mode in ("drop", "mean", "own"):
        with memsinks.sinks_mode(model, mode), memsinks.sinks_mode(loaded, mode):
            assert torch.equal(model(x, sequence_ids=ids).logits, loaded(x, sequence_ids=ids).logits)
    r1, r2 = get_router(model), get_router(loaded)
    assert torch.equal(r1.compute_pool_bits(ids), r2.compute_pool_bits(ids))
    if placement == "split":  # the files hold the effective weights, whatever sink_lr_scale stores
        from transformers import AutoModelForCausalLM

        stock = AutoModelForCausalLM.from_pretrained(tmp_path).state_dict()
        assert stock.keys() == weights.keys() and all(torch.equal(stock[k], v) for k, v in weights.items())


def test_from_pretrained_refuses_plain_checkpoint(tmp_path):
    tiny_model("gpt2").save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a memsinks checkpoint"):
        memsinks.from_pretrained(tmp_path)


def test_append_checkpoint_states_enlarged_width_and_loads_in_stock_transformers(tmp_path):
    model = memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(placement="append", n_sink_units=16,
                                                                         memorized_threshold=0))
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["n_inner"] == 64 + 16
    from transformers import AutoModelForCausalLM

    stock = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert stock.transformer.h[0].mlp.c_fc.weight.shape == (32, 80)


def test_checkpoint_weight_files_single_sharded_pickle_and_none(tmp_path):
    from memsinks.save_and_load import checkpoint_weight_files, safetensors_files

    model = tiny_model("gpt2")
    model.save_pretrained(tmp_path / "single")
    assert checkpoint_weight_files(tmp_path / "single") == ("safetensors", [str(tmp_path / "single" / "model.safetensors")])
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    fmt, paths = checkpoint_weight_files(tmp_path / "sharded")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert fmt == "safetensors" and len(paths) > 1
    assert paths == [str(tmp_path / "sharded" / n) for n in sorted(set(index["weight_map"].values()))]
    (tmp_path / "pickled").mkdir()
    torch.save(model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    assert checkpoint_weight_files(tmp_path / "pickled") == ("pickle", [str(tmp_path / "pickled" / "pytorch_model.bin")])
    with pytest.raises(FileNotFoundError, match="only pickle"):
        safetensors_files(tmp_path / "pickled")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no model weights"):
        checkpoint_weight_files(tmp_path / "empty")


def test_sharded_checkpoint_with_sinks_round_trips(tmp_path):
    model = memsinks.add_sinks(tiny_model("llama"), memsinks.SinksConfig(placement="append", n_sink_units=16,
                                                                          memorized_threshold=0))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval().save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    loaded = memsinks.from_pretrained(tmp_path)
    x, ids = token_batch(), torch.tensor([1, 2, 3])
    with memsinks.sinks_mode(model, "own"), memsinks.sinks_mode(loaded, "own"):
        assert torch.equal(model(x, sequence_ids=ids).logits, loaded(x, sequence_ids=ids).logits)


def test_the_routing_record_is_saved_beside_the_weights_and_never_shipped(tmp_path):
    from safetensors import safe_open

    cfg = memsinks.SinksConfig(p_gen=0.5, routing_seed=9, layers=[0])
    model = memsinks.add_sinks(tiny_model("gpt2", layers=2), cfg)
    model.save_pretrained(tmp_path / "ckpt")
    record = json.loads((tmp_path / "ckpt" / "config.json").read_text())["memsinks_routing"]
    assert record["fields"]["routing_seed"] == 9 and record["fields"]["layers"] == [0]
    assert record["pool_sizes"] == {"0": 32}
    assert not hasattr(model.config, "memsinks_routing")  # only written during the save
    loaded = memsinks.from_pretrained(tmp_path / "ckpt")
    assert not hasattr(loaded.config, "memsinks_routing")
    memsinks.remove_sinks(loaded, prune=False).save_pretrained(tmp_path / "plain")
    assert "memsinks_routing" not in json.loads((tmp_path / "plain" / "config.json").read_text())

    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    memsinks.add_sinks(peft_model, memsinks.SinksConfig(placement="append", n_sink_units=8, routing_seed=2))
    peft_model.save_pretrained(tmp_path / "adapter")
    with safe_open(str(tmp_path / "adapter" / "sinks.safetensors"), "pt") as f:
        saved = json.loads(f.metadata()["memsinks_routing"])
    assert saved["fields"]["routing_seed"] == 2 and saved["pool_sizes"] == {"1": 8}  # "auto": the upper third
    assert saved["fields"]["layers"] == [1]
