"""A model with sinks under FSDP2 (torch's ``fully_shard``), two gloo processes on the CPU.

accelerate 1.15 runs FSDP only on GPU-like devices, so these tests shard the model with torch's
``fully_shard`` directly, as accelerate does, and save and load it with
``torch.distributed.checkpoint``'s ``get_model_state_dict`` / ``set_model_state_dict``, the
functions accelerate and the Trainer use for FSDP2 checkpoints.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO

_WORKER = r"""
import json, os, sys, torch, torch.distributed as dist
sys.path.insert(0, os.getcwd())
torch.set_num_threads(1)
dist.init_process_group("gloo")
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.fsdp import fully_shard
import memsinks
from tests.conftest import tiny_model

family, placement, out = sys.argv[1], sys.argv[2], sys.argv[3]
# split4: a split pool trained 4x faster, stored divided by 4 (its stock layout multiplies it back out of place)
config = {"split": memsinks.SinksConfig(p_gen=0.5), "split4": memsinks.SinksConfig(p_gen=0.5, sink_lr_scale=4),
          "append": memsinks.SinksConfig(placement="append", n_sink_units=16)}[placement]
reference, model = (memsinks.add_sinks(tiny_model(family, seed=1), config) for _ in "ab")
for block in (model.transformer.h if family == "gpt2" else model.model.layers):
    fully_shard(block)
fully_shard(model)
full = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered on rank 0, empty elsewhere
rank0 = dist.get_rank() == 0

def gathered():
    return {k: v.clone() for k, v in get_model_state_dict(model, options=full).items()}

def diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in b) if rank0 else None

result = {"rank": dist.get_rank(), "world": dist.get_world_size()}
before = gathered()
result["keys_match"] = sorted(before) == sorted(reference.state_dict()) if rank0 else None
result["initial_diff"] = diff(before, reference.state_dict())

# one SGD step on the same global batch: each rank takes its half, the reference the whole
x = torch.randint(1, 128, (4, 12), generator=torch.Generator().manual_seed(0))
ids = torch.tensor([11, 12, 13, 14])
half = slice(2 * dist.get_rank(), 2 * dist.get_rank() + 2)
for m, xs, ids_ in ((model, x[half], ids[half]), (reference, x, ids)):
    m.eval()  # no dropout, so both see the same function; "own" routes each sequence to its sinks as in training
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    with memsinks.sinks_mode(m, "own"):
        m(xs, labels=xs, sequence_ids=ids_).loss.backward()
    opt.step()
result["trained_diff"] = diff(gathered(), reference.state_dict())

# load a full stock-layout state dict into the sharded model
target = {k: v + 1.0 for k, v in reference.state_dict().items()}
set_model_state_dict(model, dict(target), options=StateDictOptions(full_state_dict=True))  # it rewrites the dict
result["loaded_diff"] = diff(gathered(), target)
with open(out + f".{dist.get_rank()}", "w") as f:
    json.dump(result, f)
dist.barrier()  # no rank tears gloo down while the other still has collectives in flight
dist.destroy_process_group()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)  # skip the interpreter's teardown, where gloo's threads occasionally abort a finished process
"""


@pytest.mark.slow
@pytest.mark.parametrize("family, placement", [("gpt2", "append"), ("llama", "split"), ("gpt2", "split4")])
def test_fsdp2_trains_saves_and_loads_a_model_with_sinks_in_the_stock_layout(tmp_path, family, placement):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    out = tmp_path / "result"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), family, placement, str(out)], cwd=str(REPO),
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    results = [json.loads((tmp_path / f"result.{rank}").read_text()) for rank in range(2)]
    assert [r["world"] for r in results] == [2, 2]
    for result in results[:1]:  # the full state dict is gathered on rank 0
        # the gathered weights are the stock layout (widened MLP weights under the stock keys) ...
        assert result["keys_match"] and result["initial_diff"] == 0.0
        # ... the sharded model took the same step as the whole one, each rank routing its own IDs ...
        assert result["trained_diff"] < 1e-5
        # ... and a full stock-layout state dict loads into the shards
        assert result["loaded_diff"] < 1e-6
