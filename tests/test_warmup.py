"""The sinks' warm-up: only the sinks learn for the first training forwards; saved, so a resume does not repeat it."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

import memsinks
from memsinks.sink_slices import sink_slices
from memsinks.warmup import PROGRESS_BUFFER
from tests.conftest import tiny_model, token_batch


def _model(placement: str, steps: int, **config):
    cfg = memsinks.SinksConfig(placement=placement, n_sink_units=16 if placement == "append" else None,
                               sink_warmup_steps=steps, **{"memorized_threshold": 0, **config})
    return memsinks.add_sinks(tiny_model("llama"), cfg).train()


def _step(model, opt, seed):
    x = token_batch(shape=(2, 12), seed=seed)
    model(x, labels=x, sequence_ids=torch.tensor([3, 4])).loss.backward()
    opt.step()
    opt.zero_grad()


def _outside_sinks(model) -> dict[str, torch.Tensor]:
    """Each parameter with its sink part zeroed: what must not move during the warm-up."""
    slices = {id(s.param): s for s in sink_slices(model)}
    out = {}
    for name, p in model.named_parameters():
        s = slices.get(id(p))
        w = p.detach().clone()
        out[name] = w if s is None else w - s.keep(w)
    return out


@pytest.mark.parametrize("placement,config", [("append", {}), ("split", {}), ("split", {"sink_lr_scale": 4})],
                         ids=["append", "split", "split_scaled"])
def test_only_the_sinks_move_during_the_warm_up_and_everything_after_it(placement, config):
    model = _model(placement, steps=3, **config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)  # decay would still shrink them
    start = _outside_sinks(model)
    sinks_start = [s.keep(s.param.detach().clone()) for s in sink_slices(model)]
    for i in range(3):
        _step(model, opt, i)
    for name, w in _outside_sinks(model).items():
        assert torch.equal(w, start[name]), name
    assert all(not torch.equal(s.keep(s.param.detach()), w0) for s, w0 in zip(sink_slices(model), sinks_start))
    _step(model, opt, 3)
    moved = [n for n, w in _outside_sinks(model).items() if not torch.equal(w, start[n])]
    assert "model.layers.0.self_attn.q_proj.weight" in moved
    assert int(getattr(model.model.layers[0].mlp.down_proj, PROGRESS_BUFFER)) == 3


def test_eval_and_no_grad_forwards_do_not_count():
    model = _model("append", steps=2)
    x = token_batch()
    with torch.no_grad():
        model(x, sequence_ids=torch.tensor([1, 2, 3]))
    model.eval()
    model(x, sequence_ids=torch.tensor([1, 2, 3]))
    assert int(getattr(model.model.layers[0].mlp.down_proj, PROGRESS_BUFFER)) == 0


def test_a_resumed_run_does_not_warm_up_again_and_reaches_the_uninterrupted_weights(tmp_path):
    rows = [token_batch(shape=(1, 12), seed=s)[0].tolist() for s in range(16)]
    ds = memsinks.assign_sequence_ids(Dataset.from_dict({"input_ids": rows}))

    def run(out, resume=None):
        torch.manual_seed(0)
        model = _model("append", steps=3)
        args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=4, max_steps=8, learning_rate=1e-3,
                                 report_to=[], save_strategy="steps", save_steps=4, use_cpu=True, disable_tqdm=True,
                                 seed=0, lr_scheduler_type="constant", dataloader_num_workers=0)
        Trainer(model=model, args=args, train_dataset=ds,
                data_collator=memsinks.SinksDataCollator()).train(resume_from_checkpoint=resume)
        return model

    full = run(tmp_path / "full")
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-4"))
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_removing_the_sinks_mid_warm_up_removes_its_gradient_hooks():
    model = _model("append", steps=5)
    x = token_batch()
    model(x, labels=x, sequence_ids=torch.tensor([1, 2, 3])).loss.backward()
    plain = memsinks.remove_sinks(model)
    plain.zero_grad()
    plain(x, labels=x).loss.backward()
    assert plain.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_a_batch_with_marked_private_tokens_is_not_warmed_up():
    """Marked tokens reach only the sinks anyway, so the public tokens train the shared units from the first step."""
    model = _model("append", steps=3)
    x = token_batch(shape=(2, 12), seed=0)
    private = torch.zeros_like(x)
    private[:, 4:7] = 1
    model(x, labels=x, sequence_ids=torch.tensor([3, 4]), private_mask=private).loss.backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert int(getattr(model.model.layers[0].mlp.down_proj, PROGRESS_BUFFER)) == 0
