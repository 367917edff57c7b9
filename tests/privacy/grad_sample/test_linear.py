"""nn.Linear / Conv1D (memsinks.privacy.grad_sample.linear): LoRA adapters against row-by-row autograd."""

import torch
from torch import nn

from tests.conftest import tiny_model
from tests.privacy.helpers import ROWS, check_against_autograd, no_dropout


def test_lora_adapters():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(no_dropout(tiny_model("llama")), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.1)
    model.eval()
    clipper = check_against_autograd(model, torch.arange(ROWS), "auto")
    assert all("lora_" in n for n in clipper.modes())
