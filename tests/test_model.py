"""add_sinks / sinks_mode / remove_sinks / save and load on tiny models of every family."""

import copy
import inspect
import json
import os

import pytest
import torch

import memsinks
from memsinks.model import get_router
from tests.conftest import FAMILIES, run_python, tiny_model


def _x(vocab=128, shape=(3, 12), seed=0):
    return torch.randint(1, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_append_keeps_logits_exactly(family):
    model = tiny_model(family).eval()
    x = _x()
    before = model(x).logits
    memsinks.add_sinks(model, memsinks.SinksConfig(placement="append", n_sink_units=16))
    for mode in ("drop", "mean", "own"):
        with memsinks.sinks_mode(model, mode):
            after = model(x, sequence_ids=torch.tensor([1, 2, 3])).logits
        assert torch.equal(before, after), (family, mode)
    assert type(model).__name__.endswith("ForCausalLM") or type(model).__name__ == "GPT2LMHeadModel"


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
@pytest.mark.parametrize("placement", ["split", "append"])
def test_gradient_reaches_only_own_sinks(family, placement):
    model = tiny_model(family)
    cfg = memsinks.SinksConfig(placement=placement, n_sink_units=32 if placement == "append" else None, p_gen=0.5)
    memsinks.add_sinks(model, cfg)
    model.train()
    router = get_router(model)
    a, b = 1111, 2222
    bits = router.compute_pool_bits(torch.tensor([a, b]))
    x = _x()
    model(x, labels=x, sequence_ids=torch.tensor([a, a, a])).loss.backward()
    spec = router.specs[0]
    down = model.get_submodule(_down_path(family, spec.layer))
    pool_a, pool_b = bits[0, :spec.pool], bits[1, :spec.pool]
    if placement == "append":
        grad = down.sink_weight.grad  # (out, pool)
    else:
        w = down.base.weight
        grad = (w.grad if family != "gpt2" else w.grad.t())[:, spec.shared:]
    per_unit = grad.abs().sum(dim=0)
    only_b = pool_b & ~pool_a
    assert only_b.any() and torch.all(per_unit[only_b] == 0)
    assert torch.all(per_unit[pool_a] > 0)
    # the units no sequence used in this batch also get nothing
    assert torch.all(per_unit[~pool_a] == 0)


def _down_path(family, layer):
    return {
        "gpt2": f"transformer.h.{layer}.mlp.c_proj",
        "llama": f"model.layers.{layer}.mlp.down_proj",
        "gpt_neox": f"gpt_neox.layers.{layer}.mlp.dense_4h_to_h",
    }[family]


def test_training_without_ids_is_an_error_and_eval_is_not():
    model = memsinks.add_sinks(tiny_model("gpt2"))
    x = _x()
    model.train()
    with pytest.raises(ValueError, match="no `sequence_ids`"):
        model(x, labels=x)
    model.eval()
    model(x)  # eval default is drop: no IDs needed
    with memsinks.sinks_mode(model, "own"), pytest.raises(ValueError, match="needs `sequence_ids`"):
        model(x)


@pytest.mark.parametrize(
    "ids,err",
    [
        (torch.tensor([1.0, 2.0, 3.0]), TypeError),
        (torch.tensor([True, False, True]), TypeError),
        (torch.tensor([1, -2, 3]), ValueError),
        (torch.tensor([1, 2]), ValueError),
        (torch.ones(3, 5, dtype=torch.long), ValueError),
        ("abc", TypeError),
    ],
)
def test_bad_sequence_ids(ids, err):
    model = memsinks.add_sinks(tiny_model("gpt2")).train()
    x = _x()
    with pytest.raises(err):
        model(x, labels=x, sequence_ids=ids)


def test_per_token_ids_match_per_sequence_when_constant():
    model = memsinks.add_sinks(tiny_model("llama"), memsinks.SinksConfig(p_gen=0.5))
    x = _x()
    ids = torch.tensor([5, 6, 7])
    with memsinks.sinks_mode(model, "own"):
        a = model(x, sequence_ids=ids).logits
        b = model(x, sequence_ids=ids[:, None].expand(-1, x.shape[1])).logits
    assert torch.allclose(a, b, atol=1e-6)


def test_modes_differ_and_eval_default_comes_from_config():
    model = memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(p_gen=0.5, eval_mode="mean")).eval()
    x = _x()
    ids = torch.tensor([5, 6, 7])
    outs = {}
    for mode in ("drop", "mean", "own"):
        with memsinks.sinks_mode(model, mode):
            outs[mode] = model(x, sequence_ids=ids).logits
    assert not torch.allclose(outs["drop"], outs["mean"])
    assert not torch.allclose(outs["mean"], outs["own"])
    assert torch.equal(model(x).logits, outs["mean"])
    with memsinks.sinks_mode(model, "exclude", exclude_ids=[]) if False else memsinks.sinks_mode(model, "exclude", exclude_ids=[999]):
        excl = model(x).logits
    assert not torch.allclose(excl, outs["mean"])


def test_exclude_with_ids_zeroes_the_excluded_ids_units():
    model = memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(p_gen=0.5)).eval()
    x = _x()
    with memsinks.sinks_mode(model, "exclude", exclude_ids=[5]):
        own_excluded = model(x[:1], sequence_ids=torch.tensor([5])).logits
    with memsinks.sinks_mode(model, "drop"):
        dropped = model(x[:1]).logits
    assert torch.allclose(own_excluded, dropped, atol=1e-6)


def test_generate_works_in_every_mode():
    model = memsinks.add_sinks(tiny_model("llama"), memsinks.SinksConfig(p_gen=0.5)).eval()
    x = _x(shape=(2, 6))
    plain = model.generate(x, max_new_tokens=5, do_sample=False)
    with memsinks.sinks_mode(model, "own"):
        own = model.generate(x, max_new_tokens=5, do_sample=False, sequence_ids=torch.tensor([3, 4]))
    assert plain.shape == own.shape == (2, 11)
    # generate's per-step forwards reuse the ID's masks instead of recomputing them
    assert get_router(model).masks_computed == 2


def test_generate_with_ids_equals_manual_greedy_loop():
    model = memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(p_gen=0.5)).eval()
    x = _x(shape=(1, 6))
    ids = torch.tensor([77])
    with memsinks.sinks_mode(model, "own"), torch.no_grad():
        gen = model.generate(x, max_new_tokens=6, do_sample=False, sequence_ids=ids)
        seq = x
        for _ in range(6):
            nxt = model(seq, sequence_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(gen, seq)


def test_attach_twice_and_bad_configs():
    model = memsinks.add_sinks(tiny_model("gpt2"))
    with pytest.raises(ValueError, match="already has sinks"):
        memsinks.add_sinks(model)
    with pytest.raises(ValueError, match="p_mem"):
        memsinks.SinksConfig(p_mem=0.0)
    with pytest.raises(ValueError, match="p_gen"):
        memsinks.SinksConfig(p_gen=1.5)
    with pytest.raises(ValueError, match="n_sink_units"):
        memsinks.SinksConfig(placement="append")
    with pytest.raises(ValueError, match="blocks"):
        memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(layers=[5]))
    with pytest.raises(ValueError, match="both must be at least 1"):
        memsinks.add_sinks(tiny_model("gpt2", inner=4), memsinks.SinksConfig(p_gen=0.99))


def test_unsupported_architecture_lists_families_and_registration():
    from transformers import BertConfig, BertLMHeadModel

    model = BertLMHeadModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, is_decoder=True))
    with pytest.raises(ValueError) as err:
        memsinks.add_sinks(model)
    msg = str(err.value)
    assert "gpt2" in msg and "llama" in msg and "register_architecture" in msg


def test_register_architecture_for_a_new_family():
    from transformers import PhiConfig, PhiForCausalLM

    from memsinks.architectures import _REGISTRY

    model = PhiForCausalLM(PhiConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=48)).eval()
    with pytest.raises(ValueError, match="register_architecture"):
        memsinks.add_sinks(model, memsinks.SinksConfig(placement="append", n_sink_units=8))
    with pytest.raises(ValueError, match="both an up and the down"):
        memsinks.register_architecture("phi", blocks="model.layers", up="fc1", down="fc1")
    memsinks.register_architecture("phi", blocks="model.layers", up="fc1", down="fc2")
    try:
        x = _x(vocab=64)
        before = model(x).logits
        memsinks.add_sinks(model, memsinks.SinksConfig(placement="append", n_sink_units=8))
        assert torch.equal(model(x).logits, before)
        assert model.model.layers[1].mlp.fc1(torch.zeros(1, 32)).shape == (1, 56)
    finally:
        _REGISTRY.pop("phi")


def test_signature_exposes_sequence_ids_for_the_trainer():
    model = memsinks.add_sinks(tiny_model("gpt2"))
    params = inspect.signature(model.forward).parameters
    assert "sequence_ids" in params and "input_ids" in params and "labels" in params


def test_deepcopy_has_its_own_routing_state():
    model = memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(p_gen=0.5)).eval()
    clone = copy.deepcopy(model)
    assert get_router(clone) is not get_router(model)
    clone_down = clone.transformer.h[0].mlp.c_proj
    assert clone_down.router is get_router(clone)
    assert clone.forward.model is clone
    x = _x()
    with memsinks.sinks_mode(clone, "own"):
        a = clone(x, sequence_ids=torch.tensor([1, 2, 3])).logits
        # the original's router is untouched by the clone's mode stack
        assert get_router(model).mode_stack == []
    with memsinks.sinks_mode(model, "own"):
        b = model(x, sequence_ids=torch.tensor([1, 2, 3])).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gpt2"])
@pytest.mark.parametrize("placement", ["split", "append"])
def test_save_load_round_trip_keeps_routing_and_logits(tmp_path, placement, family):
    cfg = memsinks.SinksConfig(placement=placement, n_sink_units=16 if placement == "append" else None,
                               p_gen=0.5, routing_seed=99, layers=[0, -1])
    model = memsinks.add_sinks(tiny_model(family, layers=3), cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # make the zero-initialised sink weights matter
    model.eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "sinks_config.json").read_text())
    assert saved["routing_seed"] == 99 and saved["layers"] == [0, -1]
    loaded = memsinks.from_pretrained(tmp_path)
    x = _x()
    ids = torch.tensor([10, 20, 30])
    for mode in ("drop", "mean", "own"):
        with memsinks.sinks_mode(model, mode), memsinks.sinks_mode(loaded, mode):
            assert torch.equal(model(x, sequence_ids=ids).logits, loaded(x, sequence_ids=ids).logits)
    r1, r2 = get_router(model), get_router(loaded)
    assert torch.equal(r1.compute_pool_bits(ids), r2.compute_pool_bits(ids))


def test_from_pretrained_refuses_plain_checkpoint(tmp_path):
    tiny_model("gpt2").save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a memsinks checkpoint"):
        memsinks.from_pretrained(tmp_path)


def test_append_checkpoint_states_enlarged_width_and_loads_in_stock_transformers(tmp_path):
    model = memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(placement="append", n_sink_units=16))
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["n_inner"] == 64 + 16
    from transformers import AutoModelForCausalLM

    stock = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert stock.transformer.h[0].mlp.c_fc.weight.shape == (32, 80)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
@pytest.mark.parametrize("placement,prune", [("split", True), ("split", False), ("append", True)])
def test_removed_sinks_load_without_memsinks_and_match_drop(tmp_path, family, placement, prune):
    cfg = memsinks.SinksConfig(placement=placement, n_sink_units=16 if placement == "append" else None, p_gen=0.75)
    model = memsinks.add_sinks(tiny_model(family), cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    x = _x()
    with memsinks.sinks_mode(model, "drop"):
        expected = model(x).logits
    plain = memsinks.remove_sinks(model, prune=prune)
    assert not memsinks.has_sinks(plain)
    assert torch.allclose(plain(x).logits, expected, atol=1e-5)
    plain.save_pretrained(tmp_path)
    torch.save({"x": x, "expected": expected}, tmp_path / "probe.pt")
    code = (
        "import sys, torch\n"
        "sys.modules['memsinks'] = None  # memsinks must not be importable here\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}).eval()\n"
        f"d = torch.load({str(tmp_path / 'probe.pt')!r})\n"
        "print(float((m(d['x']).logits - d['expected']).abs().max()))\n"
        "print(m.config.to_dict().get('n_inner') or m.config.intermediate_size)\n"
    )
    out = run_python(code, env={"PYTHONPATH": ""}, cwd=str(tmp_path)).split()
    assert float(out[0]) < 1e-5
    width = int(out[1])
    assert width == (48 if placement == "split" and prune else 64)


def test_remove_sinks_bakes_mean_and_exclude_modes():
    model = memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(p_gen=0.5)).eval()
    x = _x()
    for mode, ids in (("mean", None), ("exclude", [4, 5])):
        clone = copy.deepcopy(model)
        with memsinks.sinks_mode(clone, mode, exclude_ids=ids):
            expected = clone(x).logits
        plain = memsinks.remove_sinks(clone, mode=mode, exclude_ids=ids)
        assert torch.allclose(plain(x).logits, expected, atol=1e-5)
    with pytest.raises(ValueError, match="'own'"):
        memsinks.remove_sinks(copy.deepcopy(model), mode="own")


def test_split_prune_on_some_layers_needs_zeroing():
    model = memsinks.add_sinks(tiny_model("gpt2", layers=3), memsinks.SinksConfig(layers=[1]))
    with pytest.raises(ValueError, match="prune=False"):
        memsinks.remove_sinks(copy.deepcopy(model))
    memsinks.remove_sinks(model, prune=False)


def test_gradient_checkpointing_recompute_uses_the_batch_ids():
    torch.manual_seed(0)
    base = tiny_model("gpt2")
    a = memsinks.add_sinks(copy.deepcopy(base), memsinks.SinksConfig(p_gen=0.5)).train()
    b = memsinks.add_sinks(copy.deepcopy(base), memsinks.SinksConfig(p_gen=0.5)).train()
    b.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for m in (a, b):
        m.config.resid_pdrop = m.config.embd_pdrop = m.config.attn_pdrop = 0.0
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    x = _x()
    ids = torch.tensor([1, 2, 3])
    a(x, labels=x, sequence_ids=ids).loss.backward()
    b(x, labels=x, sequence_ids=ids).loss.backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n
