"""Small decoders built from a shape, for the demo, the benchmarks and the tests (nothing downloaded).

``DecoderShape`` names the few numbers that size a decoder; ``build_decoder`` turns it into a
freshly initialised transformers causal LM of one of the families below, with the
initialisation seeded, so that two arms of an experiment built with the same seed start from
the same weights. Each family maps the shape onto its own config's field names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DecoderShape:
    """The size of a small decoder.

    ``family``: one of ``FAMILIES``. ``intermediate``: MLP width (None: the family's default,
    4 x ``n_embd`` for GPT-2). ``n_kv_heads``: key/value heads of the Llama-like families
    (None: ``n_head``). ``dropout``: every dropout probability of the family (None: the
    family's defaults, which are 0 except GPT-2's 0.1).
    """

    family: str = "gpt2"
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    intermediate: int | None = 512
    max_positions: int = 256
    n_kv_heads: int | None = None
    dropout: float | None = 0.0


def _gpt2(s: DecoderShape) -> dict:
    return dict(n_layer=s.n_layer, n_embd=s.n_embd, n_head=s.n_head, n_inner=s.intermediate,
                n_positions=s.max_positions)


def _gpt_neo(s: DecoderShape) -> dict:
    # GPT-Neo alternates global and local attention over pairs of blocks; an odd depth gets global only
    kinds = [[["global", "local"], s.n_layer // 2]] if s.n_layer % 2 == 0 else [[["global"], s.n_layer]]
    return dict(num_layers=s.n_layer, hidden_size=s.n_embd, num_heads=s.n_head, intermediate_size=s.intermediate,
                attention_types=kinds, max_position_embeddings=s.max_positions)


def _gpt_neox(s: DecoderShape) -> dict:
    return dict(num_hidden_layers=s.n_layer, hidden_size=s.n_embd, num_attention_heads=s.n_head,
                intermediate_size=s.intermediate, max_position_embeddings=s.max_positions)


def _llama_like(s: DecoderShape) -> dict:
    return dict(num_hidden_layers=s.n_layer, hidden_size=s.n_embd, num_attention_heads=s.n_head,
                num_key_value_heads=s.n_kv_heads if s.n_kv_heads is not None else s.n_head,
                intermediate_size=s.intermediate, max_position_embeddings=s.max_positions)


# family -> (config class, model class, shape -> config fields, the config's dropout fields)
_FAMILIES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", _gpt2, ("resid_pdrop", "embd_pdrop", "attn_pdrop")),
    "gpt_neo": ("GPTNeoConfig", "GPTNeoForCausalLM", _gpt_neo, ("resid_dropout", "embed_dropout", "attention_dropout")),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", _gpt_neox, ("attention_dropout", "hidden_dropout")),
    "llama": ("LlamaConfig", "LlamaForCausalLM", _llama_like, ("attention_dropout",)),
    "mistral": ("MistralConfig", "MistralForCausalLM", _llama_like, ("attention_dropout",)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _llama_like, ("attention_dropout",)),
}
FAMILIES = tuple(_FAMILIES)


def build_decoder(shape: DecoderShape, vocab_size: int, *, seed: int | None = 0, token_id: int | None = None,
                  **config):
    """A freshly initialised causal LM of ``shape`` with ``vocab_size`` tokens.

    ``seed``: ``torch.manual_seed`` before the weights are drawn (None: the current RNG state).
    ``token_id``: the BOS, EOS and padding token (the local tokenizers of ``memsinks.corpus``
    use one token for all three); None leaves the family's defaults. ``config``: further config
    fields, which win over the shape's.
    """
    import transformers

    if shape.family not in _FAMILIES:
        raise ValueError(f"Unknown decoder family {shape.family!r}; choose one of {FAMILIES}.")
    config_name, model_name, fields, dropouts = _FAMILIES[shape.family]
    values = {k: v for k, v in fields(shape).items() if v is not None}
    if shape.dropout is not None:
        values.update({name: shape.dropout for name in dropouts})
    if token_id is not None:
        values.update(bos_token_id=token_id, eos_token_id=token_id, pad_token_id=token_id)
    values.update(config)
    if seed is not None:
        torch.manual_seed(seed)
    cfg = getattr(transformers, config_name)(vocab_size=vocab_size, **values)
    return getattr(transformers, model_name)(cfg)
