"""LoRA adapters on attention and sinks in the MLP, trained together (sinks attached to the peft model)."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Trainer

import memsinks
from tests.conftest import tiny_model
from tests.test_trainer import _args, _dataset


def _lora_with_sinks():
    model = tiny_model("llama")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_alpha=8))
    memsinks.add_sinks(peft_model, memsinks.SinksConfig(placement="append", n_sink_units=16))
    return peft_model


def test_lora_and_sinks_both_get_gradients_and_base_stays_frozen():
    peft_model = _lora_with_sinks().train()
    x = torch.randint(1, 128, (2, 12))
    peft_model(input_ids=x, labels=x, sequence_ids=torch.tensor([3, 4])).loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in grads) and any("sink_weight" in n for n in grads)
    down_sinks = [g for n, g in grads.items() if n.endswith("down_proj.sink_weight")]
    assert down_sinks and all(g is not None and g.abs().sum() > 0 for g in down_sinks)
    frozen = [n for n, p in peft_model.named_parameters() if not p.requires_grad]
    assert any("base.weight" in n for n in frozen) and any("embed_tokens" in n for n in frozen)


def test_sinks_attached_before_peft_are_frozen_and_say_so(caplog):
    x = torch.randint(1, 128, (2, 12))
    unrouted = memsinks.SinksConfig(placement="append", n_sink_units=16, memorized_threshold=0)
    peft_model = get_peft_model(memsinks.add_sinks(tiny_model("llama"), unrouted),
                                LoraConfig(r=4, target_modules=["q_proj"]))
    with caplog.at_level("WARNING", logger="memsinks"):
        peft_model.train()(input_ids=x, labels=x, sequence_ids=torch.tensor([3, 4]))
    assert "frozen" in caplog.text
    # the append default routes memorized tokens to the sinks, which frozen sinks cannot take: refused, with the fix
    model = memsinks.add_sinks(tiny_model("llama"), memsinks.SinksConfig(placement="append", n_sink_units=16))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="call memsinks.add_sinks after get_peft_model"):
        peft_model.train()(input_ids=x, labels=x, sequence_ids=torch.tensor([3, 4]))


def test_trainer_with_lora_and_sinks_trains_and_resumes(tmp_path):
    def run(out, resume=None):
        torch.manual_seed(0)
        peft_model = _lora_with_sinks()
        args = _args(out, max_steps=20, save_strategy="steps", save_steps=10)
        trainer = Trainer(model=peft_model, args=args, train_dataset=_dataset(), data_collator=memsinks.SinksDataCollator())
        trainer.train(resume_from_checkpoint=resume)
        return peft_model, trainer

    full, trainer = run(tmp_path / "full")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]
    ckpt = tmp_path / "full" / "checkpoint-10"
    assert (ckpt / "sinks.safetensors").is_file() and (ckpt / "sinks_config.json").is_file()
    resumed, _ = run(tmp_path / "resumed", resume=str(ckpt))
    trained = {n: p for n, p in full.named_parameters() if p.requires_grad}
    for n, p in resumed.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p, trained[n], atol=1e-5), n
    # merging LoRA leaves a memsinks model; removing the sinks leaves the plain architecture
    merged = full.merge_and_unload()
    assert memsinks.has_sinks(merged)
    plain = memsinks.remove_sinks(merged)
    assert plain.model.layers[0].mlp.down_proj.weight.shape == (32, 64)


def test_with_lora_missed_only_routing_gives_the_adapters_the_same_gradient_and_computes_fewer_head_rows():
    x, ids = torch.randint(1, 128, (2, 12), generator=torch.Generator().manual_seed(0)), torch.tensor([3, 4])
    runs = {}
    for missed_only in (False, True):
        torch.manual_seed(0)
        model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_alpha=8))
        memsinks.add_sinks(model, memsinks.SinksConfig(placement="append", n_sink_units=16, sink_warmup_steps=0,
                                                       memorized_threshold=5.0, memorized_missed_only=missed_only))
        rows = []
        model.get_output_embeddings().register_forward_hook(lambda _m, _a, out: rows.append(out.shape[:2]))
        loss = model.train()(input_ids=x, labels=x, sequence_ids=ids).loss
        loss.backward()
        runs[missed_only] = loss, rows, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    (loss, rows, grads), (loss_m, rows_m, grads_m) = runs[False], runs[True]
    assert rows == [(2, 12), (2, 12)] and rows_m[0] == (2, 12) and rows_m[1][0] == 1 and rows_m[1][1] < 22
    assert torch.allclose(loss, loss_m, atol=1e-6)
    lora = [n for n in grads if "lora_" in n]
    assert lora and all(torch.allclose(grads[n], grads_m[n], atol=1e-6) for n in lora)
    assert any(not torch.allclose(grads[n], grads_m[n]) for n in grads if "sink_weight" in n)
