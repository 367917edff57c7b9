"""Which model families memsinks knows, and registering a new one."""

import pytest
import torch

import memsinks
from tests.conftest import token_batch


def test_unsupported_architecture_lists_families_and_registration():
    from transformers import BertConfig, BertLMHeadModel

    model = BertLMHeadModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, is_decoder=True))
    with pytest.raises(ValueError) as err:
        memsinks.add_sinks(model)
    msg = str(err.value)
    assert "gpt2" in msg and "llama" in msg and "register_architecture" in msg


def test_register_architecture_for_a_new_family():
    from transformers import PhiConfig, PhiForCausalLM

    from memsinks.architectures import _REGISTRY

    model = PhiForCausalLM(PhiConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=48)).eval()
    with pytest.raises(ValueError, match="register_architecture"):
        memsinks.add_sinks(model, memsinks.SinksConfig(placement="append", n_sink_units=8))
    with pytest.raises(ValueError, match="both an up and the down"):
        memsinks.register_architecture("phi", blocks="model.layers", up="fc1", down="fc1")
    memsinks.register_architecture("phi", blocks="model.layers", up="fc1", down="fc2")
    try:
        x = token_batch(vocab=64)
        before = model(x).logits
        memsinks.add_sinks(model, memsinks.SinksConfig(placement="append", n_sink_units=8))
        assert torch.equal(model(x).logits, before)
        fc1 = model.model.layers[1].mlp.fc1
        assert fc1(torch.zeros(1, 32)).shape == (1, 48)  # that forward dropped the sinks: the pool is left out
        with memsinks.sinks_mode(model, "own"):
            model(x, sequence_ids=torch.arange(1, x.shape[0] + 1))
        assert fc1(torch.zeros(1, 32)).shape == (1, 56)  # with sinks on, the up projection carries the 8 units
    finally:
        _REGISTRY.pop("phi")
