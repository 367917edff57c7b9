"""Small decoders from a shape: the asked size in every family, seeded weights, dropout and special tokens."""

from __future__ import annotations

import pytest
import torch

from memsinks._small_decoder import FAMILIES, DecoderShape, build_decoder


def _mlp_width(model) -> int:
    cfg = model.config
    return cfg.n_inner if cfg.model_type == "gpt2" else cfg.intermediate_size


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_has_the_shape_it_was_asked_for(family):
    shape = DecoderShape(family=family, n_layer=2, n_embd=32, n_head=4, intermediate=48, max_positions=64,
                         n_kv_heads=2)
    model = build_decoder(shape, 50, seed=3, token_id=7)
    cfg = model.config
    assert cfg.model_type == family
    assert (cfg.vocab_size, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (50, 2, 32, 4)
    assert _mlp_width(model) == 48 and cfg.max_position_embeddings == 64
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (7, 7, 7)
    if family in ("llama", "mistral", "qwen2"):
        assert cfg.num_key_value_heads == 2
    assert model.get_input_embeddings().weight.shape == (50, 32)
    x = torch.randint(0, 50, (2, 10))
    assert model(x).logits.shape == (2, 10, 50)


def test_the_seed_decides_the_weights():
    shape = DecoderShape(n_layer=1, n_embd=32, n_head=2, intermediate=64)
    a, b, c = (build_decoder(shape, 40, seed=s).state_dict() for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["transformer.h.0.mlp.c_fc.weight"], c["transformer.h.0.mlp.c_fc.weight"])


def test_dropout_off_by_default_and_the_library_default_kept_with_none():
    off = build_decoder(DecoderShape(n_layer=1, n_embd=32, n_head=2), 40).config
    kept = build_decoder(DecoderShape(n_layer=1, n_embd=32, n_head=2, dropout=None), 40).config
    assert (off.resid_pdrop, off.embd_pdrop, off.attn_pdrop) == (0.0, 0.0, 0.0)
    assert (kept.resid_pdrop, kept.embd_pdrop, kept.attn_pdrop) == (0.1, 0.1, 0.1)
    wider = build_decoder(DecoderShape(n_layer=1, n_embd=32, n_head=2, intermediate=None), 40, n_positions=32)
    assert wider.config.n_positions == 32 and wider.transformer.h[0].mlp.c_fc.weight.shape[1] == 4 * 32


def test_an_unknown_family_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="Unknown decoder family 'bert'.*gpt2"):
        build_decoder(DecoderShape(family="bert"), 40)
