"""The routing hash: matches its pure-Python specification, has the right statistics, is cached."""

import random

import pytest
import torch

from memsinks.config import SinksConfig
from memsinks.routing import LayerSpec, SinkRouter, mix64, mix64_tensor, reference_unit_is_on, _signed
import memsinks
import memsinks.model
from tests.conftest import run_python, tiny_model


def _router(p_mem=0.3, seed=0, specs=((0, 100, 30), (1, 100, 30), (3, 100, 30)), cache=8192):
    cfg = SinksConfig(p_gen=0.7, p_mem=p_mem, routing_seed=seed, mask_cache_size=cache)
    return SinkRouter(cfg, [LayerSpec(*s) for s in specs])


def test_tensor_hash_equals_python_reference():
    rng = random.Random(1)
    values = [0, 1, 2, (1 << 63) - 1, 1 << 62] + [rng.getrandbits(64) for _ in range(2000)]
    got = mix64_tensor(torch.tensor([_signed(v) for v in values], dtype=torch.int64))
    expected = torch.tensor([_signed(mix64(v)) for v in values], dtype=torch.int64)
    assert torch.equal(got, expected)


def test_router_bits_equal_reference_decision():
    router = _router(seed=12345)
    ids = [0, 1, 2, 3, 987654321987654321, (1 << 63) - 1]
    bits = router.compute_pool_bits(torch.tensor(ids))
    col = 0
    for spec in router.specs:
        for unit in range(spec.pool):
            for row, i in enumerate(ids):
                assert bool(bits[row, col]) == reference_unit_is_on(12345, i, spec.layer, unit, 0.3)
            col += 1


def test_id_zero_routes_to_no_sinks():
    router = _router()
    assert not router.compute_pool_bits(torch.tensor([0])).any()


def test_active_fraction_close_to_p_mem_over_1000_ids():
    for p_mem in (0.3, 0.5):
        router = _router(p_mem=p_mem)
        bits = router.compute_pool_bits(torch.arange(1, 1001))
        assert abs(bits.float().mean().item() - p_mem) < 0.03
        per_id = bits.float().mean(dim=1)
        assert per_id.std().item() < 0.1


def test_consecutive_ids_overlap_like_independent_masks():
    p = 0.3
    router = _router(p_mem=p, specs=((0, 1000, 1000),))
    bits = router.compute_pool_bits(torch.arange(1, 2002)).float()
    overlap = (bits[:-1] * bits[1:]).mean(dim=1)  # share of units both neighbours use
    # independent masks: E = p^2, and the mean over 2000 pairs of 1000 units has std ~ 1e-4
    assert abs(overlap.mean().item() - p * p) < 0.005
    # and neighbours are no more alike than random pairs
    perm = torch.randperm(bits.shape[0] - 1, generator=torch.Generator().manual_seed(0))
    random_pairs = (bits[:-1] * bits[perm]).mean(dim=1)
    assert abs(overlap.mean().item() - random_pairs.mean().item()) < 0.005


def test_seed_changes_masks():
    a = _router(seed=1).compute_pool_bits(torch.arange(1, 50))
    b = _router(seed=2).compute_pool_bits(torch.arange(1, 50))
    assert not torch.equal(a, b)
    assert abs((a == b).float().mean().item() - (0.3**2 + 0.7**2)) < 0.03


def test_masks_identical_across_processes_and_hash_seeds():
    code = (
        "import torch\n"
        "from memsinks.config import SinksConfig\n"
        "from memsinks.routing import LayerSpec, SinkRouter\n"
        "r = SinkRouter(SinksConfig(routing_seed=7), [LayerSpec(0, 64, 20), LayerSpec(5, 64, 20)])\n"
        "bits = r.compute_pool_bits(torch.tensor([1, 2, 3, 424242, 2**62]))\n"
        "print(''.join('1' if b else '0' for b in bits.flatten().tolist()))\n"
    )
    out1 = run_python(code, env={"PYTHONHASHSEED": "1"})
    out2 = run_python(code, env={"PYTHONHASHSEED": "987"})
    assert out1 == out2 and len(out1.strip()) == 5 * 40


def test_cache_computes_each_id_once():
    router = _router()
    dev = torch.device("cpu")
    for _ in range(1000):
        router.begin(torch.tensor([5, 6, 5, 7]), "own", (), torch.float32, dev)
    assert router.masks_computed == 3
    assert router.cache_hits == 999 * 3


def test_cache_is_bounded_and_still_correct():
    router = _router(cache=4)
    dev = torch.device("cpu")
    first = router.pool_bits(range(1, 10), dev)
    assert len(router._cache) == 4
    again = router.pool_bits(range(1, 10), dev)
    assert torch.equal(first, again)


def test_per_token_masks_follow_each_token_id():
    router = _router()
    ids = torch.tensor([[1, 1, 2, 0], [3, 3, 3, 3]])
    router.begin(ids, "own", (), torch.float32, torch.device("cpu"))
    m = router.mask_for(1)  # split: width 100, last 30 units are the pool
    assert m.shape == (2, 4, 100)
    ref = router.compute_pool_bits(torch.tensor([1, 2, 0, 3]))[:, 30:60].float()
    assert torch.equal(m[0, 0, 70:], ref[0]) and torch.equal(m[0, 2, 70:], ref[1])
    assert torch.equal(m[0, 3, 70:], ref[2]) and torch.equal(m[1, 1, 70:], ref[3])
    assert torch.all(m[..., :70] == 1)


@pytest.mark.parametrize("mode,expected", [("drop", 0.0), ("mean", 0.3)])
def test_constant_modes(mode, expected):
    router = _router()
    router.begin(None, mode, (), torch.float32, torch.device("cpu"))
    m = router.mask_for(0)
    assert m.shape == (100,)
    assert torch.all(m[:70] == 1) and torch.allclose(m[70:], torch.full((30,), expected))


def test_exclude_mode_zeroes_only_excluded_units():
    router = _router()
    router.begin(None, "exclude", (11, 12), torch.float32, torch.device("cpu"))
    m = router.mask_for(3)[70:]
    bits = router.compute_pool_bits(torch.tensor([11, 12]))[:, 60:90].any(0)
    assert torch.all(m[bits] == 0) and torch.allclose(m[~bits], torch.full_like(m[~bits], 0.3))


@pytest.mark.parametrize("mode,exclude", [("drop", ()), ("mean", ()), ("exclude", (11, 12))])
def test_constant_pool_is_the_pool_part_of_the_constant_masks(mode, exclude):
    router = _router()
    pool = router.constant_pool(mode, exclude)
    assert pool.shape == (90,) and pool.dtype == torch.float32
    router.begin(None, mode, exclude, torch.float32, torch.device("cpu"))
    for i, layer in enumerate((0, 1, 3)):
        assert torch.equal(router.mask_for(layer)[70:], pool[30 * i:30 * (i + 1)])
    with pytest.raises(ValueError, match="'own'"):
        router.constant_pool("own", ())


def test_mirrored_pairs_share_one_routing_bit():
    model = memsinks.add_sinks(tiny_model("llama"), memsinks.SinksConfig(placement="append", n_sink_units=16))
    router = memsinks.model.get_router(model)
    bits = router.compute_pool_bits(torch.tensor([7, 8, 9]))
    for i, spec in enumerate(router.specs):
        block = bits[:, 16 * i:16 * (i + 1)]
        assert torch.equal(block[:, :8], block[:, 8:])
        for unit in range(16):
            assert bool(block[0, unit]) == reference_unit_is_on(0, 7, spec.layer, router.routed_unit(spec, unit), 0.3)


def test_centered_masks_give_own_units_one_minus_p_the_rest_minus_p_and_every_constant_mode_zero():
    cfg = memsinks.SinksConfig(placement="append", n_sink_units=16, centered_masks=True, sink_init="zero")
    model = memsinks.add_sinks(tiny_model("llama"), cfg)
    router = memsinks.model.get_router(model)
    ids = torch.tensor([7, 8])
    router.begin(ids, "own", (), torch.float32, torch.device("cpu"))
    mask = router.mask_for(router.specs[0].layer)[:, 0]
    bits = router.compute_pool_bits(ids)[:, :16]
    assert torch.equal(mask, torch.where(bits, torch.tensor(0.7), torch.tensor(-0.3)))
    for mode in ("drop", "mean"):
        router.begin(None, mode, (), torch.float32, torch.device("cpu"))
        assert router.mask_for(router.specs[0].layer) is None, mode
    router.begin(ids, "exclude", (7,), torch.float32, torch.device("cpu"))
    excluded = router.mask_for(router.specs[0].layer)[:, 0]
    assert torch.equal(excluded[1], torch.where(bits[0], torch.tensor(0.0), mask[1]))
