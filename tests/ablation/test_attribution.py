"""Attention short-circuit hook, per-unit pool control, per-block attribution and the pool sweep."""

import copy
import json

import pytest
import torch

import memsinks
from memsinks.ablation import attribute_blocks, load_sinks_checkpoint, scaled_pool_units, short_circuit_attention
from memsinks.ablation.attribution import attention_module, heldout_loss
from memsinks.ablation.pool_units import units_of_block
from memsinks.ablation.sweep import drop_scale, sweep_sink_pool
from tests.ablation.helpers import SUFFIX, trained_canary_model
from tests.conftest import tiny_model

HOOK_FAMILIES = ["gpt2", "gpt_neox", "llama"]


def _x(shape=(2, 12), seed=0):
    return torch.randint(1, 128, shape, generator=torch.Generator().manual_seed(seed))


def _perturbed(family, layers=2):
    model = tiny_model(family, layers=layers).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("family", HOOK_FAMILIES)
def test_hook_off_is_bit_identical_to_the_stock_model(family):
    model = _perturbed(family)
    stock = copy.deepcopy(model)
    x = _x()
    config = attention_module(model.get_submodule(_block_path(family, 0))).config
    with torch.no_grad():
        with short_circuit_attention(model, [0, 1]):
            hooked = model(x).logits
        after = model(x).logits
        reference = stock(x).logits
    assert torch.equal(after, reference)
    assert not torch.allclose(hooked, reference)
    assert attention_module(model.get_submodule(_block_path(family, 0))).config is config


def _block_path(family, i):
    return {"gpt2": f"transformer.h.{i}", "gpt_neox": f"gpt_neox.layers.{i}", "llama": f"model.layers.{i}"}[family]


@pytest.mark.parametrize("family", HOOK_FAMILIES)
def test_short_circuited_block_output_at_i_ignores_tokens_before_i(family):
    model = _perturbed(family)
    x = _x()
    y = x.clone()
    y[:, :6] = _x((2, 6), seed=1)  # differ only before position 6
    captured = []
    block0 = model.get_submodule(_block_path(family, 0))
    handle = block0.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            model(x), model(y)
            plain_x, plain_y = captured[-2:]
            with short_circuit_attention(model, 0):
                model(x), model(y)
            sc_x, sc_y = captured[-2:]
            with short_circuit_attention(model, [0, -1]):  # every block: the logits at i see token i only
                lx, ly = model(x).logits, model(y).logits
    finally:
        handle.remove()
    assert not torch.allclose(plain_x[:, 6:], plain_y[:, 6:])  # normally earlier tokens matter ...
    assert torch.equal(sc_x[:, 6:], sc_y[:, 6:])  # ... with the hook, not at all
    assert not torch.allclose(sc_x[:, :6], sc_y[:, :6])
    assert torch.allclose(lx[:, 6:], ly[:, 6:], atol=1e-6)


def test_short_circuited_gpt2_attention_is_the_output_projection_of_its_own_values():
    model = _perturbed("gpt2")
    attn = model.transformer.h[0].attn
    h = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), short_circuit_attention(model, 0):
        out = attn(h)[0]
        values = attn.c_attn(h).split(attn.split_size, dim=2)[2]
        expected = attn.c_proj(values)
    assert torch.allclose(out, expected, atol=1e-6)


def test_hook_with_kv_cache_generates_as_a_full_forward_does():
    model = _perturbed("llama")
    x = _x((1, 5))
    with torch.no_grad(), short_circuit_attention(model, 1):
        generated = model.generate(x, max_new_tokens=5, do_sample=False)
        seq = x
        for _ in range(5):
            seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, seq)


def test_unsupported_attention_is_a_clear_error():
    model = tiny_model("gpt_neo").eval()
    with pytest.raises((ValueError, RuntimeError), match="AttentionInterface|attention dispatch"):
        with short_circuit_attention(model, 0):
            model(_x())
    with pytest.raises(ValueError, match="does not exist"):
        with short_circuit_attention(tiny_model("gpt2"), 5):
            pass


@pytest.mark.parametrize("placement", ["split", "append"])
def test_scaled_pool_units_restores_weights_exactly_and_zero_equals_drop(placement):
    cfg = memsinks.SinksConfig(placement=placement, n_sink_units=16 if placement == "append" else None, p_gen=0.5)
    model = memsinks.add_sinks(_perturbed("gpt2"), cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, ids = _x(), torch.tensor([5, 6])
    total = memsinks.model.get_router(model).total_pool
    with torch.no_grad():
        with memsinks.sinks_mode(model, "own"):
            with scaled_pool_units(model, torch.zeros(total)):
                zeroed = model(x, sequence_ids=ids).logits
            with scaled_pool_units(model, torch.full((total,), memsinks.get_sinks_config(model).p_mem)):
                scaled_own = model(x, sequence_ids=ids).logits
        with memsinks.sinks_mode(model, "drop"):
            dropped = model(x).logits
    assert torch.allclose(zeroed, dropped, atol=1e-6)
    assert not torch.allclose(scaled_own, dropped)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    with pytest.raises(ValueError, match="one scale per pool unit"):
        with scaled_pool_units(model, torch.zeros(total + 1)):
            pass


def test_drop_scale_drops_nested_growing_subsets():
    model = memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(p_gen=0.5))
    total = memsinks.model.get_router(model).total_pool
    dropped = [set(torch.nonzero(drop_scale(model, f) == 0).flatten().tolist()) for f in (0, 0.25, 0.5, 0.75, 1.0)]
    assert [len(d) for d in dropped] == [round(f * total) for f in (0, 0.25, 0.5, 0.75, 1.0)]
    assert all(a <= b for a, b in zip(dropped, dropped[1:]))


@pytest.fixture(scope="module")
def trained():
    return trained_canary_model()


def test_sweep_end_points_are_own_and_drop_modes(trained, tmp_path):
    model = load_sinks_checkpoint(trained.checkpoint)
    windows, ids, prefix = trained.canary_windows()
    held_ids = [memsinks.content_id(s) for s in trained.heldout]
    result = sweep_sink_pool(model, windows, trained.heldout, ids, held_ids, prefix_len=prefix, suffix_len=SUFFIX,
                             pad_token_id=trained.tokenizer.pad_token_id, progress=False)
    first, last = result.measurements[0], result.measurements[-1]
    assert first.exact_match == 1.0 and last.exact_match == 0.0
    pad = trained.tokenizer.pad_token_id
    with memsinks.sinks_mode(model, "own"):
        assert first.heldout_loss == heldout_loss(model, trained.heldout, held_ids, pad_token_id=pad)
    with memsinks.sinks_mode(model, "drop"):
        assert last.heldout_loss == pytest.approx(heldout_loss(model, trained.heldout, held_ids, pad_token_id=pad),
                                                  abs=1e-6)
    result.plot(str(tmp_path / "sweep.png"))
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(json.dumps(result.to_dict()))["points"][2]["dropped_fraction"] == 0.5


def test_attribute_blocks_on_the_trained_model(trained, tmp_path):
    model = load_sinks_checkpoint(trained.checkpoint)
    windows, ids, prefix = trained.canary_windows()
    held_ids = [memsinks.content_id(s) for s in trained.heldout]
    result = attribute_blocks(model, windows, trained.heldout, ids, held_ids, prefix_len=prefix, suffix_len=SUFFIX,
                              pad_token_id=trained.tokenizer.pad_token_id, progress=False)
    assert result.baseline.exact_match == 1.0 and len(result.attention) == len(result.sinks) == 2
    for b in range(2):  # each intervention was in force while measuring: the held-out loss moved
        assert result.attention[b].heldout_loss != result.baseline.heldout_loss
        assert result.sinks[b].heldout_loss != result.baseline.heldout_loss
    with memsinks.sinks_mode(model, "own"), scaled_pool_units(model, (~units_of_block(model, 1)).float()):
        assert result.sinks[1].heldout_loss == heldout_loss(model, trained.heldout, held_ids,
                                                            pad_token_id=trained.tokenizer.pad_token_id)
    table = result.format_table()
    assert "attention short-circuited" in table and len(table.splitlines()) == 7 + 2
    result.plot(str(tmp_path / "attr.png"))
    assert (tmp_path / "attr.png").stat().st_size > 1000


def test_blocks_without_sinks_have_no_sink_row():
    model = memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(p_gen=0.5, layers=[1])).eval()
    seqs = [list(range(1, 13)), list(range(20, 32))]
    result = attribute_blocks(model, seqs, seqs, [1, 2], [3, 4], prefix_len=6, suffix_len=6, progress=False)
    assert result.sinks[0] is None and result.sinks[1] is not None
    assert result.to_dict()["blocks"][0]["sinks_dropped"] is None
