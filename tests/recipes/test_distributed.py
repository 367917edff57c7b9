"""recipes/train.py run end to end in 1 and 2 CPU processes (gloo): DDP through accelerate's launcher, and
DeepSpeed ZeRO-2 and ZeRO-3 on DeepSpeed's CPU accelerator.

Every run trains the same tiny recipe (tests.recipes.helpers.tiny_pretrain_config: 8 steps of a global
batch of 8 rows) and each test asserts the world size it got. What must hold under distribution:
the loss curve matches one process with the same global batch; every sequence ID gets the same mask
on every rank (checked against the pure-Python routing reference); the probe callback logs each
probe once; a checkpoint saved by 2 processes resumes under 1 and under 2 to the same model; the
export reads what the distributed run saved.
"""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch

import memsinks
from memsinks.routing import reference_unit_is_on
from tests.recipes.helpers import (ACCELERATE, check_ok, log_history, run_recipe, summary, tiny_pretrain_config,
                                  write_config)

pytestmark = pytest.mark.slow

PROBE_KEY = "memorization/extraction_exact"
LOSS_TOL = 1e-4  # summation order differs between 1 and 2 processes; observed differences are ~1e-6


def _run(tmp_path_factory, name, *extra, sections=None, **launch):
    base = tmp_path_factory.mktemp(name)
    config = write_config(base / "recipe.yaml", tiny_pretrain_config(base / "out", **(sections or {})))
    stdout = check_ok(run_recipe(config, *extra, **launch))
    return base / "out", stdout, config


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, plain python: the reference."""
    return _run(tmp_path_factory, "single")


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """Two CPU processes through recipes/accelerate/cpu_2proc.yaml; exports the model at the end."""
    return _run(tmp_path_factory, "ddp", sections={"export": {"enabled": True, "report": False}},
                accelerate_config="cpu_2proc.yaml")


@pytest.fixture(scope="module")
def zero2(tmp_path_factory):
    pytest.importorskip("deepspeed")
    return _run(tmp_path_factory, "zero2", accelerate_config="deepspeed_zero2.yaml")


@pytest.fixture(scope="module")
def zero3(tmp_path_factory):
    """recipes/accelerate/deepspeed_zero3.yaml with its DeepSpeed config spelled out, plus one change: DeepSpeed
    keeps parameters under stage3_param_persistence_threshold (1e5 elements) whole on every rank, which is every
    parameter of the tiny model; a threshold of 0 makes ZeRO-3 shard them all."""
    pytest.importorskip("deepspeed")
    import json

    import yaml

    base = tmp_path_factory.mktemp("zero3-config")
    shipped = yaml.safe_load((ACCELERATE / "deepspeed_zero3.yaml").read_text())
    ds = shipped.pop("deepspeed_config")
    del shipped["mixed_precision"]  # bf16 is for GPUs; with a DeepSpeed file, precision is the file's (fp32)
    (base / "ds.json").write_text(json.dumps({
        "zero_optimization": {"stage": ds["zero_stage"], "stage3_param_persistence_threshold": 0,
                              "stage3_gather_16bit_weights_on_model_save": ds["zero3_save_16bit_model"]},
        "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto"}))
    shipped["deepspeed_config"] = {"deepspeed_config_file": str(base / "ds.json"), "zero3_init_flag": False}
    (base / "accelerate.yaml").write_text(yaml.safe_dump(shipped))
    return _run(tmp_path_factory, "zero3", accelerate_config=str(base / "accelerate.yaml"))


def _losses(out) -> dict[int, float]:
    return dict((int(step), loss) for step, loss in summary(out)["loss_curve"])


def _assert_same_curve(out, reference, steps=None):
    got, ref = _losses(out), _losses(reference)
    steps = steps or sorted(ref)
    assert len(steps) >= 2 and all(s in got for s in steps), (sorted(got), steps)
    for s in steps:
        assert abs(got[s] - ref[s]) < LOSS_TOL, (s, got[s], ref[s])


def _final_state(out) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "final" / "model.safetensors"))


def _assert_same_weights(out, reference, tol=1e-4):
    a, b = _final_state(out), _final_state(reference)
    assert set(b) <= set(a) and set(a) - set(b) <= {"lm_head.weight"}  # DeepSpeed also writes the tied head
    assert max(float((a[k] - b[k]).abs().max()) for k in b) < tol


def _probe_steps(out) -> list[int]:
    return [h["step"] for h in log_history(out) if PROBE_KEY in h]


def _reference_fingerprint(model, sequence_id: int) -> str:
    """The routing audit's fingerprint of an ID's pool bits, computed with the pure-Python routing reference."""
    router = memsinks.model.get_router(model)
    cfg = router.config
    bits = [reference_unit_is_on(cfg.routing_seed, sequence_id, spec.layer, unit, cfg.p_mem)
            for spec in router.specs for unit in range(spec.pool)]
    return hashlib.blake2b(np.array(bits, dtype=bool).tobytes(), digest_size=8).hexdigest()


def _audit(out) -> dict:
    import json

    return json.loads((out / "routing_audit.json").read_text())


# ----------------------------------------------------------------------------------------------------- DDP
def test_two_cpu_processes_train_like_one_process_with_the_same_global_batch(single, ddp):
    s1, s2 = summary(single[0]), summary(ddp[0])
    assert (s1["world_size"], s1["engine"], s1["wrapped_model"]) == (1, "single", "GPT2LMHeadModel")
    assert (s2["world_size"], s2["engine"], s2["wrapped_model"]) == (2, "ddp", "DistributedDataParallel")
    assert s1["global_batch_size"] == s2["global_batch_size"] == 8 and s2["per_device_train_batch_size"] == 4
    assert "DDP, 2 processes" in ddp[1]
    _assert_same_curve(ddp[0], single[0])
    _assert_same_weights(ddp[0], single[0])


def test_every_id_gets_the_same_mask_on_every_rank(single, ddp):
    audit = _audit(ddp[0])
    assert audit["world_size"] == 2 and audit["mismatched_ids"] == []
    per_rank = [{int(k): v for k, v in r.items()} for r in audit["per_rank"]]
    shared = set(per_rank[0]) & set(per_rank[1])
    assert shared, "the tiny recipe repeats rows so that some IDs are routed on both ranks"
    model = memsinks.from_pretrained(ddp[0] / "final")
    for fingerprints in per_rank:
        for sid, fp in fingerprints.items():
            assert fp == _reference_fingerprint(model, sid), sid
    one = {int(k): v for k, v in _audit(single[0])["per_rank"][0].items()}
    assert set(one) == set(per_rank[0]) | set(per_rank[1])  # the same rows trained, split across the ranks


def test_the_probe_callback_logs_each_probe_once(single, ddp):
    assert _probe_steps(ddp[0]) == _probe_steps(single[0]) == [4, 8]
    assert ddp[1].count(f"'{PROBE_KEY}'") == 2  # printed by rank 0 only
    by_step = {h["step"]: h for h in log_history(single[0]) if PROBE_KEY in h}
    for entry in (h for h in log_history(ddp[0]) if PROBE_KEY in h):  # work split across ranks, same numbers
        for key in ("memorization/mia_auc_loss", "memorization/token_accuracy"):
            assert entry[key] == pytest.approx(by_step[entry["step"]][key], abs=1e-6)


def test_the_export_reads_the_checkpoint_two_processes_saved(ddp):
    from transformers import AutoModelForCausalLM

    with_sinks = memsinks.from_pretrained(ddp[0] / "final")
    shipped = AutoModelForCausalLM.from_pretrained(ddp[0] / "shipped").eval()
    assert summary(ddp[0])["export"]["mlp_width_after"] == 64  # split, p_gen 0.5 of 128 units: pruned
    x = torch.randint(0, shipped.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), memsinks.sinks_mode(with_sinks, "drop"):
        assert torch.allclose(shipped(x).logits, with_sinks(x).logits, atol=1e-5)


@pytest.mark.parametrize("launch", [{}, {"accelerate_config": "cpu_2proc.yaml"}], ids=["1 process", "2 processes"])
def test_a_checkpoint_saved_by_two_processes_resumes(ddp, tmp_path, launch):
    out = tmp_path / "out"
    out.mkdir()
    for part in ("recipe_data", "checkpoint-4"):
        shutil.copytree(ddp[0] / part, out / part)
    stdout = check_ok(run_recipe(ddp[2], "--training.output_dir", str(out), "--resume", **launch))
    s = summary(out)
    assert s["world_size"] == (2 if launch else 1) and s["resumed_from"].endswith("checkpoint-4")
    assert "saved under 2 process(es), ddp" in stdout
    # step 5's entry differs: the uninterrupted run's averages steps 4-5 (the probe at step 4 took the Trainer's log)
    _assert_same_curve(out, ddp[0], steps=[6, 7])
    _assert_same_weights(out, ddp[0])


# ----------------------------------------------------------------------------------------------------- DeepSpeed
def test_deepspeed_zero2_on_two_cpu_processes_trains_like_one_process(single, zero2):
    out, stdout, _ = zero2
    s = summary(out)
    assert (s["world_size"], s["deepspeed"], s["zero_stage"], s["wrapped_model"]) == (2, True, 2, "DeepSpeedEngine")
    assert "DeepSpeed ZeRO-2, 2 process(es)" in stdout
    _assert_same_curve(out, single[0])
    _assert_same_weights(out, single[0])
    assert _probe_steps(out) == [4, 8] and stdout.count(f"'{PROBE_KEY}'") == 2
    audit = _audit(out)
    assert audit["world_size"] == 2 and audit["mismatched_ids"] == [] and audit["ids_routed_on_several_ranks"] > 0


def test_deepspeed_zero3_checkpoints_are_normal_transformers_checkpoints(single, zero3):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    out, stdout, _ = zero3
    s = summary(out)
    assert (s["world_size"], s["deepspeed"], s["zero_stage"]) == (2, True, 3) and "DeepSpeed ZeRO-3" in stdout
    sharded, total = s["zero3_sharded_parameters"]
    assert sharded == total > 0  # really sharded: each rank holds only its part of every parameter
    _assert_same_curve(out, single[0])
    _assert_same_weights(out, single[0])
    assert _probe_steps(out) == [4, 8] and _audit(out)["mismatched_ids"] == []
    for ckpt in (out / "checkpoint-4", out / "final"):
        with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
            assert not [k for k in f.keys() if ".base." in k or "sink_" in k], ckpt
        _, info = AutoModelForCausalLM.from_pretrained(ckpt, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]
    reloaded = memsinks.from_pretrained(out / "final")
    reference = memsinks.from_pretrained(single[0] / "final")
    x, ids = torch.randint(0, 300, (2, 12)), torch.tensor([5, 6])
    with torch.no_grad(), memsinks.sinks_mode(reloaded, "own"), memsinks.sinks_mode(reference, "own"):
        assert torch.allclose(reloaded(x, sequence_ids=ids).logits, reference(x, sequence_ids=ids).logits, atol=1e-4)
