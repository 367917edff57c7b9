"""The instance forward of a model with sinks: it takes sequence_ids, routes by them, and generate() passes them on."""

import copy
import inspect

import pytest
import torch

import memsinks
from memsinks.model import get_router
from tests.conftest import tiny_model, token_batch


def test_training_without_ids_is_an_error_and_eval_is_not():
    model = memsinks.add_sinks(tiny_model("gpt2"))
    x = token_batch()
    model.train()
    with pytest.raises(ValueError, match="no `sequence_ids`"):
        model(x, labels=x)
    model.eval()
    model(x)  # eval default is drop: no IDs needed
    with memsinks.sinks_mode(model, "own"), pytest.raises(ValueError, match="needs `sequence_ids`"):
        model(x)


def test_per_token_ids_match_per_sequence_when_constant():
    model = memsinks.add_sinks(tiny_model("llama"), memsinks.SinksConfig(p_gen=0.5))
    x = token_batch()
    ids = torch.tensor([5, 6, 7])
    with memsinks.sinks_mode(model, "own"):
        a = model(x, sequence_ids=ids).logits
        b = model(x, sequence_ids=ids[:, None].expand(-1, x.shape[1])).logits
    assert torch.allclose(a, b, atol=1e-6)


def test_generate_works_in_every_mode():
    model = memsinks.add_sinks(tiny_model("llama"), memsinks.SinksConfig(p_gen=0.5)).eval()
    x = token_batch(shape=(2, 6))
    plain = model.generate(x, max_new_tokens=5, do_sample=False)
    with memsinks.sinks_mode(model, "own"):
        own = model.generate(x, max_new_tokens=5, do_sample=False, sequence_ids=torch.tensor([3, 4]))
    assert plain.shape == own.shape == (2, 11)
    # generate's per-step forwards reuse the ID's masks instead of recomputing them
    assert get_router(model).masks_computed == 2


def test_generate_with_ids_equals_manual_greedy_loop():
    model = memsinks.add_sinks(tiny_model("gpt2"), memsinks.SinksConfig(p_gen=0.5)).eval()
    x = token_batch(shape=(1, 6))
    ids = torch.tensor([77])
    with memsinks.sinks_mode(model, "own"), torch.no_grad():
        gen = model.generate(x, max_new_tokens=6, do_sample=False, sequence_ids=ids)
        seq = x
        for _ in range(6):
            nxt = model(seq, sequence_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(gen, seq)


def test_signature_exposes_sequence_ids_for_the_trainer():
    model = memsinks.add_sinks(tiny_model("gpt2"))
    params = inspect.signature(model.forward).parameters
    assert "sequence_ids" in params and "input_ids" in params and "labels" in params


def test_gradient_checkpointing_recompute_uses_the_batch_ids():
    torch.manual_seed(0)
    base = tiny_model("gpt2")
    a = memsinks.add_sinks(copy.deepcopy(base), memsinks.SinksConfig(p_gen=0.5)).train()
    b = memsinks.add_sinks(copy.deepcopy(base), memsinks.SinksConfig(p_gen=0.5)).train()
    b.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for m in (a, b):
        m.config.resid_pdrop = m.config.embd_pdrop = m.config.attn_pdrop = 0.0
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    x = token_batch()
    ids = torch.tensor([1, 2, 3])
    a(x, labels=x, sequence_ids=ids).loss.backward()
    b(x, labels=x, sequence_ids=ids).loss.backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n
