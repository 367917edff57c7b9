"""Loading a base model to train on: which checkpoint a path names, and the model and tokenizer it loads.

GGUF loading itself (de-quantized weights, the quantization flag dropped so the Trainer takes
the model) is exercised on the real SmolLM2 GGUF by tests/test_real_model.py.
"""

from __future__ import annotations

import pytest
import torch

from memsinks._causal_lm import load_causal_lm, load_tokenizer, resolve_checkpoint
from memsinks.corpus import train_tokenizer
from tests.conftest import tiny_model


def test_a_path_names_a_directory_a_gguf_file_in_it_or_a_hub_name(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert resolve_checkpoint(str(tmp_path / "hf")) == (str(tmp_path / "hf"), None)
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "m.Q4.gguf").write_bytes(b"")
    assert resolve_checkpoint(str(tmp_path / "one")) == (str(tmp_path / "one"), "m.Q4.gguf")
    assert resolve_checkpoint(str(tmp_path / "one" / "m.Q4.gguf")) == (str(tmp_path / "one"), "m.Q4.gguf")
    assert resolve_checkpoint(str(tmp_path / "hf"), gguf_file="x.gguf") == (str(tmp_path / "hf"), "x.gguf")
    assert resolve_checkpoint("HuggingFaceTB/SmolLM2-135M") == ("HuggingFaceTB/SmolLM2-135M", None)


def test_paths_that_name_no_checkpoint_are_refused(tmp_path):
    (tmp_path / "two").mkdir()
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / "two" / name).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no config.json and 2 .gguf files"):
        resolve_checkpoint(str(tmp_path / "two"))
    with pytest.raises(FileNotFoundError, match="no such directory or file"):
        resolve_checkpoint(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="not a .gguf file"):
        resolve_checkpoint(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="names another"):
        resolve_checkpoint(str(tmp_path / "two" / "a.gguf"), gguf_file="b.gguf")


def test_a_saved_model_loads_with_the_same_logits_and_its_tokenizer_pads_with_eos(tmp_path):
    tok = train_tokenizer(["the cat sat on the mat", "a dog ran"], vocab_size=260)
    tok.pad_token = None
    model = tiny_model("llama", vocab=len(tok), seed=4).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = load_causal_lm(str(tmp_path)).eval()
    x = torch.randint(0, len(tok), (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    assert loaded.dtype == torch.float32 and getattr(loaded, "hf_quantizer", None) is None
    assert load_causal_lm(str(tmp_path), dtype=torch.bfloat16).dtype == torch.bfloat16
    reloaded = load_tokenizer(str(tmp_path))
    assert reloaded.pad_token == reloaded.eos_token == "<|endoftext|>"
