"""add_sinks / sinks_mode / remove_sinks on tiny models of every family."""

import copy
import json

import pytest
import torch

import memsinks
from memsinks.model import get_router
from tests.conftest import FAMILIES, run_python, tiny_model, token_batch


@pytest.mark.parametrize("family", FAMILIES)
def test_append_keeps_logits_exactly(family):
    model = tiny_model(family).eval()
    x = token_batch()
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
    """With 0/1 routing (centered masks give every unit a coefficient; tests/test_routing.py covers those)."""
    model = tiny_model(family)
    cfg = memsinks.SinksConfig(placement=placement, n_sink_units=32 if placement == "append" else None, p_gen=0.5,
                               centered_masks=False)
    memsinks.add_sinks(model, cfg)
    model.train()
    router = get_router(model)
    a, b = 1111, 2222
    bits = router.compute_pool_bits(torch.tensor([a, b]))
    x = token_batch()
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


def test_modes_differ_and_eval_default_comes_from_config():
    model = memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(p_gen=0.5, eval_mode="mean")).eval()
    x = token_batch()
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
    x = token_batch()
    with memsinks.sinks_mode(model, "exclude", exclude_ids=[5]):
        own_excluded = model(x[:1], sequence_ids=torch.tensor([5])).logits
    with memsinks.sinks_mode(model, "drop"):
        dropped = model(x[:1]).logits
    assert torch.allclose(own_excluded, dropped, atol=1e-6)


def test_attach_twice_and_configs_the_model_cannot_take():
    model = memsinks.add_sinks(tiny_model("gpt2"))
    with pytest.raises(ValueError, match="already has sinks"):
        memsinks.add_sinks(model)
    with pytest.raises(ValueError, match="blocks"):
        memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(layers=[5]))
    with pytest.raises(ValueError, match="both must be at least 1"):
        memsinks.add_sinks(tiny_model("gpt2", inner=4), memsinks.SinksConfig(p_gen=0.99))


def test_deepcopy_has_its_own_routing_state():
    model = memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(p_gen=0.5)).eval()
    clone = copy.deepcopy(model)
    assert get_router(clone) is not get_router(model)
    clone_down = clone.transformer.h[0].mlp.c_proj
    assert clone_down.router is get_router(clone)
    assert clone.forward.model is clone
    x = token_batch()
    with memsinks.sinks_mode(clone, "own"):
        a = clone(x, sequence_ids=torch.tensor([1, 2, 3])).logits
        # the original's router is untouched by the clone's mode stack
        assert get_router(model).mode_stack == []
    with memsinks.sinks_mode(model, "own"):
        b = model(x, sequence_ids=torch.tensor([1, 2, 3])).logits
    assert torch.equal(a, b)


REMOVED = [(family, placement, prune) for family in ("gpt2", "llama", "gpt_neox")
           for placement, prune in (("split", True), ("split", False), ("append", True))]


def test_removed_sinks_load_without_memsinks_and_match_drop(tmp_path):
    """Each family and placement, pruned or not: the plain model equals drop mode here and, saved, in a fresh
    interpreter where memsinks cannot be imported (one interpreter loads all of them: each start costs seconds)."""
    saved = {}
    for family, placement, prune in REMOVED:
        cfg = memsinks.SinksConfig(placement=placement, n_sink_units=16 if placement == "append" else None, p_gen=0.75)
        model = memsinks.add_sinks(tiny_model(family), cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        model.eval()
        x = token_batch()
        with memsinks.sinks_mode(model, "drop"):
            expected = model(x).logits
        plain = memsinks.remove_sinks(model, prune=prune)
        case = f"{family}-{placement}-{'pruned' if prune else 'kept'}"
        assert not memsinks.has_sinks(plain), case
        assert torch.allclose(plain(x).logits, expected, atol=1e-5), case
        plain.save_pretrained(tmp_path / case)
        torch.save({"x": x, "expected": expected}, tmp_path / case / "probe.pt")
        saved[case] = 48 if placement == "split" and prune else 64
    code = (
        "import json, sys, torch\n"
        "sys.modules['memsinks'] = None  # memsinks must not be importable here\n"
        "from transformers import AutoModelForCausalLM\n"
        "out = {}\n"
        f"for case in {sorted(saved)!r}:\n"
        f"    m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r} + '/' + case).eval()\n"
        f"    d = torch.load({str(tmp_path)!r} + '/' + case + '/probe.pt')\n"
        "    width = m.config.to_dict().get('n_inner') or m.config.intermediate_size\n"
        "    out[case] = [float((m(d['x']).logits - d['expected']).abs().max()), width]\n"
        "print(json.dumps(out))\n"
    )
    loaded = json.loads(run_python(code, env={"PYTHONPATH": ""}, cwd=str(tmp_path)))
    assert sorted(loaded) == sorted(saved)
    for case, width in saved.items():
        assert loaded[case][0] < 1e-5, case
        assert loaded[case][1] == width, case


def test_remove_sinks_bakes_mean_and_exclude_modes():
    model = memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(p_gen=0.5)).eval()
    x = token_batch()
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


def test_sinks_mode_none_leaves_the_mode_as_it_is():
    model = memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(p_gen=0.5, eval_mode="mean")).eval()
    x = token_batch()
    expected = model(x).logits
    with memsinks.sinks_mode(model, "own"), memsinks.sinks_mode(model, None):
        assert get_router(model).mode_stack == [("own", ())]
    with memsinks.sinks_mode(model, None):
        assert get_router(model).mode_stack == []
        assert torch.equal(model(x).logits, expected)
    plain = tiny_model("gpt2")
    with memsinks.sinks_mode(plain, None) as inside:
        assert inside is plain
    with pytest.raises(ValueError, match="exclude_ids only applies"):
        with memsinks.sinks_mode(model, None, exclude_ids=[3]):
            pass


def test_remove_sinks_that_cannot_be_described_leaves_the_model_untouched():
    model = memsinks.add_sinks(tiny_model("gpt2", layers=3), memsinks.SinksConfig(
        placement="append", n_sink_units=16, layers=[1]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="widths differ"):
        memsinks.remove_sinks(model, mode="mean")
    assert memsinks.has_sinks(model)
    after = model.state_dict()
    assert sorted(after) == sorted(before) and all(torch.equal(after[k], before[k]) for k in before)
