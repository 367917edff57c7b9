"""unwrap_model finds the transformers model inside any nesting of training wrappers."""

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from memsinks.unwrap import unwrap_model
from tests.conftest import tiny_model


class _DDPLike(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module


class _OpacusLike(nn.Module):
    def __init__(self, module):
        super().__init__()
        self._module = module


class _CompiledLike(nn.Module):
    def __init__(self, module):
        super().__init__()
        self._orig_mod = module


def test_unwrap_peels_every_wrapper_in_any_order():
    model = tiny_model("llama")
    assert unwrap_model(model) is model
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    base = peft_model.get_base_model()
    for wrapped in (_DDPLike(peft_model), _OpacusLike(_DDPLike(peft_model)), _CompiledLike(_OpacusLike(peft_model))):
        assert unwrap_model(wrapped) is base
    # a transformers model that has a `module` attribute of its own is not a wrapper
    model.module = torch.nn.Linear(2, 2)
    assert unwrap_model(model) is model
