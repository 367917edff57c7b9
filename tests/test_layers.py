"""The sink wrappers: their forward, their stock state-dict layout, and unloading each one to a plain projection."""

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import memsinks
from memsinks.layers import (
    DOWN_PROJECTIONS, AppendSinkDownProjection, SinkDownProjection, SinkUpProjection, SplitSinkDownProjection,
)
from memsinks.model import get_router
from memsinks.projection import in_out
from tests.conftest import tiny_model, token_batch


def _model_with_sinks(family, placement):
    cfg = memsinks.SinksConfig(placement=placement, n_sink_units=16 if placement == "append" else None, p_gen=0.75,
                               memorized_threshold=0)  # every block, one pass: the layer mechanics
    model = memsinks.add_sinks(tiny_model(family), cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    return model.eval()


def _down(model):
    return next(m for m in model.modules() if isinstance(m, SinkDownProjection))


def test_each_placement_is_a_down_projection_variant_with_the_attributes_the_privacy_hooks_read():
    assert DOWN_PROJECTIONS == {"split": SplitSinkDownProjection, "append": AppendSinkDownProjection}
    for placement, cls in DOWN_PROJECTIONS.items():
        model = _model_with_sinks("llama", placement)
        down = _down(model)
        assert type(down) is cls and issubclass(cls, SinkDownProjection)
        assert down.placement == placement and down.router is get_router(model)
        assert isinstance(down.base, nn.Linear) and down.layer == 0 and down.pool == get_router(model).specs[0].pool
    up = model.model.layers[0].mlp.up_proj
    assert isinstance(up, SinkUpProjection) and up.pool == 16 and up.sink_weight.shape == (16, 32)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("placement", ["split", "append"])
@pytest.mark.parametrize("mode", ["drop", "mean", "exclude"])
def test_unload_reproduces_the_wrapper_in_a_constant_mode(family, placement, mode):
    model = _model_with_sinks(family, placement)
    router = get_router(model)
    down = _down(model)
    exclude = (5, 6) if mode == "exclude" else ()
    factor = router.constant_pool(mode, exclude)[:down.pool]
    width = down.unloaded_width(False)
    h = torch.randn(2, 3, width, generator=torch.Generator().manual_seed(0))
    router.begin(None, mode, exclude, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        expected = down(h)
        plain = down.unload(factor, prune=False)
        assert type(plain) in (nn.Linear, Conv1D)
        assert torch.allclose(plain(h), expected, atol=1e-6)
        if mode == "drop":
            pruned = down.unload(factor, prune=True)
            kept = down.unloaded_width(True)
            assert kept == width - down.pool and type(pruned) in (nn.Linear, Conv1D)
            assert torch.allclose(pruned(h[..., :kept]), expected, atol=1e-6)


@pytest.mark.parametrize("placement", ["split", "append"])
def test_unloading_the_up_projections_keeps_or_drops_exactly_the_pool_rows(placement):
    model = _model_with_sinks("gpt2", placement)
    mlp = model.transformer.h[0].mlp
    down = mlp.c_proj
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = mlp.c_fc(x)
        kept = down.unload_up(mlp.c_fc, prune=False)
        pruned = down.unload_up(mlp.c_fc, prune=True)
        assert type(kept) is Conv1D and type(pruned) is Conv1D
        assert torch.allclose(kept(x), full, atol=1e-6)  # append: base and pool rows now in one matmul
        assert torch.equal(pruned(x), full[..., :down.unloaded_width(True)])
    assert (kept is mlp.c_fc) == (placement == "split")  # split leaves the up projection alone unless pruning


def test_pruning_refuses_a_factor_that_is_not_zero():
    down = _down(_model_with_sinks("llama", "split"))
    with pytest.raises(ValueError, match="mode 'drop'"):
        down.unload(torch.full((down.pool,), 0.3), prune=True)


@pytest.mark.parametrize("placement", ["split", "append"])
def test_state_dict_is_the_stock_layout_and_loads_back(placement):
    model = _model_with_sinks("gpt2", placement)
    state = model.state_dict()
    extra = set(state) - set(tiny_model("gpt2").state_dict())
    # the stock keys, plus the warm-up's progress where a warm-up is configured (append's default)
    assert extra == ({"transformer.h.0.mlp.c_proj.sink_warmup_progress"} if placement == "append" else set())
    width = 64 + (16 if placement == "append" else 0)
    assert state["transformer.h.0.mlp.c_fc.weight"].shape == (32, width)
    assert state["transformer.h.0.mlp.c_proj.weight"].shape == (width, 32)
    fresh = memsinks.add_sinks(tiny_model("gpt2", seed=5), memsinks.SinksConfig(
        placement=placement, n_sink_units=16 if placement == "append" else None, p_gen=0.75, memorized_threshold=0))
    fresh.load_state_dict(state)
    for (name, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters()):
        assert torch.equal(a, b), name


def test_a_checkpoint_of_another_width_is_refused_by_name():
    model = _model_with_sinks("llama", "append")
    state = model.state_dict()
    key = "model.layers.0.mlp.down_proj.weight"
    state[key] = state[key][:, :-1]
    with pytest.raises(RuntimeError, match="down_proj.weight: the checkpoint's MLP has 79 units where this model"):
        model.load_state_dict(state)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
def test_with_the_pools_dropped_the_up_projections_leave_them_out_and_the_logits_stay_the_same_to_the_bit(family):
    model = _model_with_sinks(family, "append")
    ups = [m for m in model.modules() if isinstance(m, SinkUpProjection)]
    widths = []
    hooks = [m.register_forward_hook(lambda m, args, out: widths.append(out.shape[-1] - in_out(m.base)[1]))
             for m in ups]
    x = token_batch(shape=(2, 12))
    with torch.no_grad(), memsinks.sinks_mode(model, "drop"):
        dropped = model(x).logits
        assert widths and set(widths) == {0}  # not one pool unit computed
        for m in ups:  # without the router, the up projections compute the pool, which the down one zeroes
            m.__dict__["router"] = None
        full = model(x).logits
    assert set(widths[len(ups):]) == {16}
    assert torch.equal(dropped, full)
    for m in ups:
        m.__dict__["router"] = get_router(model)
    widths.clear()
    with torch.no_grad(), memsinks.sinks_mode(model, "own"):
        model(x, sequence_ids=torch.tensor([1, 2]))
    assert set(widths) == {16}
    for h in hooks:
        h.remove()


def _append(family, **overrides):
    cfg = memsinks.SinksConfig(placement="append", n_sink_units=16, sink_warmup_steps=0,
                               **{"memorized_threshold": 0, **overrides})
    return memsinks.add_sinks(tiny_model(family), cfg)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
def test_mirrored_units_keep_the_logits_exactly_and_every_unit_learns_from_the_first_step(family):
    base = tiny_model(family).eval()
    model = _append(family).eval()
    x = token_batch(shape=(3, 16))
    with torch.no_grad(), memsinks.sinks_mode(model, "own"):
        assert torch.equal(model(x, sequence_ids=torch.tensor([1, 2, 3])).logits, base(x).logits)
    model.train()(x, labels=x, sequence_ids=torch.tensor([1, 2, 3])).loss.backward()
    for name, p in model.named_parameters():
        if name.endswith("sink_weight"):
            assert (p.grad.abs().sum(dim=1 if "down" in name or "c_proj" in name or "4h_to_h" in name else 0) > 0).any(), name
            assert p.grad.abs().sum() > 0, name


def test_zero_initialised_down_columns_leave_the_up_rows_without_gradient_at_the_first_step():
    model = _append("llama", sink_init="zero").train()
    x = token_batch(shape=(3, 16))
    model(x, labels=x, sequence_ids=torch.tensor([1, 2, 3])).loss.backward()
    up = model.model.layers[0].mlp.up_proj
    assert not up.sink_weight.grad.any()
    assert model.model.layers[0].mlp.down_proj.sink_weight.grad.any()


def test_the_learning_rate_scale_moves_the_effective_weights_that_many_times_further_under_adam():
    moved = {}
    for scale in (1.0, 8.0):
        model = _append("llama", sink_lr_scale=scale).train()
        down = model.model.layers[0].mlp.down_proj
        before = down.effective_weight().detach().clone()
        opt = torch.optim.Adam([down.sink_weight], lr=1e-3)
        x = token_batch(shape=(3, 16))
        model(x, labels=x, sequence_ids=torch.tensor([1, 2, 3])).loss.backward()
        opt.step()
        moved[scale] = (down.effective_weight().detach() - before).abs().max()
    assert torch.isclose(moved[8.0], 8 * moved[1.0], rtol=1e-3)


def test_a_scaled_pool_saves_its_effective_weights_and_loads_back_bit_for_bit():
    model = _append("gpt2", sink_lr_scale=32.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    state = model.state_dict()
    down = model.transformer.h[0].mlp.c_proj
    assert torch.equal(state["transformer.h.0.mlp.c_proj.weight"][-16:], (down.sink_weight * 32).t())
    fresh = _append("gpt2", sink_lr_scale=32.0)
    fresh.load_state_dict(state)
    for (name, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters()):
        assert torch.equal(a, b), name
    plain = memsinks.remove_sinks(model, mode="mean", prune=False)
    assert torch.equal(plain.transformer.h[0].mlp.c_fc.weight, state["transformer.h.0.mlp.c_fc.weight"])


def _split(family, scale, seed=0):
    cfg = memsinks.SinksConfig(p_gen=0.5, p_mem=0.25, sink_lr_scale=scale)
    return memsinks.add_sinks(tiny_model(family, seed=seed), cfg)


def _mlp_parts(model, family):
    """Block 0's effective MLP weights from the state dict, as (pool parts, shared parts): up rows (gate and up for
    llama) and down columns. Both tiny MLPs have 64 units; p_gen 0.5 makes the last 32 the pool."""
    state = model.state_dict()
    if family == "gpt2":
        up, down = state["transformer.h.0.mlp.c_fc.weight"], state["transformer.h.0.mlp.c_proj.weight"]
        return [up[:, 32:], down[32:]], [up[:, :32], down[:32]]
    prefix = "model.layers.0.mlp."
    gate, up, down = (state[prefix + n + ".weight"] for n in ("gate_proj", "up_proj", "down_proj"))
    return [gate[32:], up[32:], down[:, 32:]], [gate[:32], up[:32], down[:, :32]]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_split_pool_with_a_learning_rate_scale_computes_the_same_function_and_saves_the_same_weights(family):
    plain, scaled = _split(family, 1.0).eval(), _split(family, 4.0).eval()
    x = token_batch(shape=(3, 16))
    ids = torch.tensor([1, 2, 3])
    for mode in ("own", "drop", "mean"):
        with torch.no_grad(), memsinks.sinks_mode(plain, mode), memsinks.sinks_mode(scaled, mode):
            # the stored pool times a power of two is the weight exactly, so the logits are bit-identical
            assert torch.equal(scaled(x, sequence_ids=ids).logits, plain(x, sequence_ids=ids).logits), mode
    a, b = plain.state_dict(), scaled.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fresh = _split(family, 4.0, seed=7)
    fresh.load_state_dict(b)
    for (name, p), (_, q) in zip(scaled.named_parameters(), fresh.named_parameters()):
        assert torch.equal(p, q), name
    for mode, prune in (("drop", True), ("drop", False), ("mean", False)):
        with torch.no_grad():
            expect = memsinks.remove_sinks(_split(family, 1.0), mode=mode, prune=prune).eval()(x).logits
            got = memsinks.remove_sinks(_split(family, 4.0), mode=mode, prune=prune).eval()(x).logits
        assert torch.equal(got, expect), (mode, prune)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_adam_moves_a_scaled_split_pool_that_many_times_further_and_the_shared_units_as_before(family):
    moved, shared = {}, {}
    x = token_batch(shape=(3, 16))
    for scale in (1.0, 4.0):
        model = _split(family, scale).train()
        assert get_router(model).specs[0].pool == 32
        pool_before, shared_before = [[t.clone() for t in part] for part in _mlp_parts(model, family)]
        rest_before = {k: v.clone() for k, v in model.state_dict().items() if "mlp" not in k}
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model(x, labels=x, sequence_ids=torch.tensor([1, 2, 3])).loss.backward()
        opt.step()
        pool_after, shared_after = _mlp_parts(model, family)
        moved[scale] = torch.stack([(t - b).abs().max() for t, b in zip(pool_after, pool_before)])
        after = model.state_dict()
        shared[scale] = [t - b for t, b in zip(shared_after, shared_before)] + [
            after[k] - v for k, v in rest_before.items()]
    assert (moved[1.0] > 0).all()
    assert torch.allclose(moved[4.0], 4 * moved[1.0], rtol=1e-3)
    for a, b in zip(shared[4.0], shared[1.0]):
        assert torch.allclose(a, b, atol=1e-7)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
def test_the_sink_slices_of_a_scaled_split_pool_are_every_up_rows_bias_and_down_columns(family):
    from memsinks.architectures import find_blocks, layout_for
    from memsinks.layers import SplitSinkUpProjection
    from memsinks.sink_slices import sink_slices

    model = _split(family, 4.0)
    layout = layout_for(model.config.model_type)
    expected = []
    for block in find_blocks(model, layout):
        mlp = getattr(block, layout.mlp)
        for name in layout.up:
            up = getattr(mlp, name)
            assert isinstance(up, SplitSinkUpProjection)
            expected += [(id(up.base.weight), 1 if isinstance(up.base, Conv1D) else 0, 32)]
            if up.base.bias is not None:
                expected.append((id(up.base.bias), 0, 32))
        down = getattr(mlp, layout.down).base
        expected.append((id(down.weight), 0 if isinstance(down, Conv1D) else 1, 32))
    assert sorted((id(s.param), s.dim, s.start) for s in sink_slices(model)) == sorted(expected)
