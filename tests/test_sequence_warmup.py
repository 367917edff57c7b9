"""The sequence warm-up: a sequence's first training forwards train only the sinks; then the whole model learns from it."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

import memsinks
from memsinks.sequence_warmup import COUNTS_BUFFER, SequenceWarmup
from memsinks.sink_slices import sink_slices
from tests.conftest import tiny_model, token_batch

SHARED = "model.layers.0.self_attn.q_proj.weight"


def _model(sightings: int, placement: str = "append"):
    cfg = memsinks.SinksConfig(placement=placement, n_sink_units=16 if placement == "append" else None,
                               sink_warmup_steps=0, sequence_warmup=sightings)
    return memsinks.add_sinks(tiny_model("llama"), cfg).train()


def _grads(model, x, ids, labels=None):
    model.zero_grad(set_to_none=True)
    out = model(x, labels=x if labels is None else labels, sequence_ids=ids)
    out.loss.backward()
    return out.loss.detach(), {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def _sink_grad_norm(model) -> float:
    return sum(float(s.keep(s.param.grad).abs().sum()) for s in sink_slices(model) if s.param.grad is not None)


@pytest.mark.parametrize("placement", ["append", "split"])
def test_first_sightings_train_only_the_sinks_then_everything(placement):
    model = _model(2, placement)
    x, ids = token_batch(shape=(2, 12), seed=0), torch.tensor([5, 6])
    for _ in range(2):  # sightings 1 and 2: shared gradient exactly zero, sinks learn
        _, grads = _grads(model, x, ids)
        assert grads[SHARED] is None or not grads[SHARED].any()
        assert _sink_grad_norm(model) > 0
    _, grads = _grads(model, x, ids)  # the third: the shared units learn too
    assert grads[SHARED].abs().sum() > 0


def test_a_mixed_batch_gives_the_shared_units_exactly_the_seen_sequences_gradient():
    """Row 0 is new, row 1 was seen: the shared gradient is row 1's alone, the loss value that of one plain forward."""
    model = _model(1)
    reference = memsinks.add_sinks(tiny_model("llama"), memsinks.SinksConfig(
        placement="append", n_sink_units=16, sink_warmup_steps=0)).train()
    reference.load_state_dict(model.state_dict(), strict=False)
    x = token_batch(shape=(2, 12), seed=1)
    _grads(model, x[1:], torch.tensor([8]))  # sequence 8 seen once: warm-up over for it
    model.zero_grad(set_to_none=True)
    ids = torch.tensor([7, 8])
    loss, grads = _grads(model, x, ids)
    with torch.no_grad():
        assert torch.allclose(loss, reference(x, labels=x, sequence_ids=ids).loss, atol=1e-6)
    only_seen = x.clone()
    only_seen[0] = -100
    ref_loss, ref_grads = _grads(reference, x, ids, labels=only_seen)
    share = 11 / 22  # the seen row's labelled tokens over all of the batch's
    torch.testing.assert_close(grads[SHARED], ref_grads[SHARED] * share)


def test_the_counts_are_saved_so_a_resumed_run_does_not_warm_up_again(tmp_path):
    model = _model(1)
    x, ids = token_batch(shape=(2, 12), seed=2), torch.tensor([11, 12])
    _grads(model, x, ids)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(k.endswith(COUNTS_BUFFER) for k in state)
    resumed = _model(1)
    resumed.load_state_dict(state)
    _, grads = _grads(resumed, x, ids)
    assert grads[SHARED].abs().sum() > 0
    _, fresh = _grads(_model(1), x, ids)
    assert fresh[SHARED] is None or not fresh[SHARED].any()


def test_the_sketch_counts_each_id_and_never_under_counts():
    warm = SequenceWarmup(torch.nn.Linear(2, 2), sightings=2)
    ids = torch.randint(0, 2**62, (2000,), generator=torch.Generator().manual_seed(0))
    assert warm.on_training_forward(ids).all()  # all new
    assert warm.on_training_forward(ids[:1000]).all()  # seen once < 2
    out = warm.on_training_forward(ids)
    assert not out[:1000].any() and out[1000:].all()
    per_token = warm.on_training_forward(torch.stack([ids[:4], torch.arange(0, 4)]))  # (B, T) IDs: per token
    assert per_token.shape == (2, 4) and not per_token[0].any()
    assert per_token[1].tolist() == [False, True, True, True]  # ID 0 has no sinks: never warmed up


def test_eval_forwards_do_not_count_and_a_trainer_run_trains(tmp_path):
    model = _model(1)
    x = token_batch()
    model.eval()
    with torch.no_grad():
        model(x, sequence_ids=torch.tensor([1, 2, 3]))
    assert not getattr(model.model.layers[0].mlp.down_proj, COUNTS_BUFFER).any()
    rows = [token_batch(shape=(1, 12), seed=s)[0].tolist() for s in range(8)]
    ds = memsinks.assign_sequence_ids(Dataset.from_dict({"input_ids": rows}))
    model.train()
    before = copy.deepcopy(model.state_dict())
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=2,
                             learning_rate=1e-3, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=ds, data_collator=memsinks.SinksDataCollator()).train()
    after = model.state_dict()
    assert not torch.equal(after[SHARED], before[SHARED])  # the second epoch trained the shared units
    assert int(getattr(model.model.layers[0].mlp.down_proj, COUNTS_BUFFER).max()) == 2


def test_without_labels_it_says_what_to_do():
    model = _model(1)
    x = token_batch()
    with pytest.raises(ValueError, match="sequence_warmup.*no labels"):
        model(x, sequence_ids=torch.tensor([1, 2, 3]))


@pytest.mark.parametrize("value", [-1, 255, True, 1.0])
def test_bad_values_are_refused(value):
    with pytest.raises(ValueError, match="sequence_warmup"):
        memsinks.SinksConfig(placement="append", n_sink_units=16, sequence_warmup=value)


def test_return_dict_false_gets_its_tuple_back():
    model = _model(1)
    x = token_batch(shape=(2, 12), seed=3)
    out = model(x, labels=x, sequence_ids=torch.tensor([21, 22]), return_dict=False)
    assert isinstance(out, tuple) and out[0].dim() == 0
    out[0].backward()
    assert _sink_grad_norm(model) > 0


_DDP_WORKER = r"""
import json, os, sys, torch, torch.distributed as dist
sys.path.insert(0, os.getcwd())
torch.set_num_threads(1)
dist.init_process_group("gloo")
from torch.nn.parallel import DistributedDataParallel
import memsinks
from tests.conftest import tiny_model, token_batch

rank = dist.get_rank()
config = memsinks.SinksConfig(placement="append", n_sink_units=16, sink_warmup_steps=0, sequence_warmup=1)
model = memsinks.add_sinks(tiny_model("llama"), config).train()
inner = model
warm = inner.forward.sequence_warmup
seen = []
count = warm.on_training_forward
warm.on_training_forward = lambda ids: seen.append(None if (w := count(ids)) is None else w.flatten().tolist()) or w
ddp = DistributedDataParallel(model)  # broadcasts rank 0's buffers before every forward
x = token_batch(shape=(1, 12), seed=rank)
for ids in ([100 + rank], [100 + rank], [101 - rank]):  # new, seen here, seen by the other process only
    ddp(x, labels=x, sequence_ids=torch.tensor(ids)).loss.backward()
with open(sys.argv[1] + f".{rank}", "w") as f:
    json.dump(seen, f)
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_under_ddp_every_process_counts_every_processs_sequences(tmp_path):
    import json
    import os
    import socket
    import subprocess
    import sys

    from tests.conftest import REPO

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "seen")], cwd=str(REPO),
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    for r in range(2):
        # first sight warms up; the second sight (here) and the first sight on this process of a sequence the
        # other process saw do not, though DDP overwrote this process's buffers with rank 0's before each forward
        assert json.loads((tmp_path / f"seen.{r}").read_text()) == [[True], None, None]
