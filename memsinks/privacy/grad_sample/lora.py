"""peft's LoRA adapters: on ``nn.Linear`` they are ordinary linear layers (``linear``); on an embedding they are
refused, with the fix.

peft's ``lora.Embedding`` keeps its adapters as bare parameters (``lora_embedding_A`` /
``lora_embedding_B``) used in its own forward, not as modules with forwards of their own,
so no handler would see them. ``modules_to_save=["embed_tokens"]`` trains a full copy of the
embedding instead, which the embedding handler serves.
"""

from __future__ import annotations

from peft.tuners.lora import Embedding as LoraEmbedding

from memsinks.privacy.grad_sample.registry import Handler, register_handler


@register_handler(LoraEmbedding)
class LoraEmbeddingHandler(Handler):
    def owned(self, module):
        return {f"{group}.{name}": p for group in ("lora_embedding_A", "lora_embedding_B")
                for name, p in getattr(module, group).named_parameters() if p.requires_grad}

    def covers(self, module):
        return (module.lora_embedding_A, module.lora_embedding_B)

    def validate(self, module):
        raise ValueError(
            f"A LoRA adapter on an embedding ({type(module).__name__} over {type(module.base_layer).__name__}) cannot "
            "get per-example gradients. Leave the embedding out of LoraConfig.target_modules, or train the whole "
            "embedding privately with LoraConfig(modules_to_save=['embed_tokens'])."
        )
