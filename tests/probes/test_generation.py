"""Batched, left-padded, KV-cached generation equals the one-sequence uncached greedy loop token for token."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import memsinks
from memsinks.probes import extraction, generate_continuations
from memsinks.probes.generation import greedy_continuations_uncached
from tests.conftest import tiny_model



def _sharpen(model, scale=4.0, seed=0):
    """Perturb a freshly initialised tiny model and scale its output head, so that greedy continuations
    vary (a tied GPT-2 at init echoes its input token) and stay far from ties (near-uniform logits).

    The head gets its own scaled copy of the weights: a head tied to the input embeddings is untied
    rather than scaling the inputs too.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone() * scale)
    return model


def _prefixes(vocab, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "qwen2"])
def test_batched_cached_equals_uncached_loop(family):
    model = _sharpen(tiny_model(family, vocab=32)).eval()
    prefixes = _prefixes(32, [7, 3, 12, 7, 1, 9])  # ragged: left padding in every batch
    expected = greedy_continuations_uncached(model, prefixes, 10)
    got = generate_continuations(model, prefixes, 10, batch_size=4)
    np.testing.assert_array_equal(got, expected)


def test_eos_does_not_stop_generation():
    model = _sharpen(tiny_model("llama", vocab=32)).eval()
    prefixes = _prefixes(32, [4, 6, 5, 4, 7, 3])
    expected = greedy_continuations_uncached(model, prefixes, 12)
    # make EOS a token that the loop emits and then follows with other tokens, so stopping would show
    eos = next(int(row[i]) for row in expected for i in range(11) if row[i + 1] != row[i])
    pad = next(t for t in range(32) if t not in expected)
    model.config.eos_token_id = model.generation_config.eos_token_id = eos
    got = generate_continuations(model, prefixes, 12, pad_token_id=pad)
    np.testing.assert_array_equal(got, expected)


def test_model_generation_config_extras_are_ignored():
    model = _sharpen(tiny_model("llama", vocab=32)).eval()
    prefixes = _prefixes(32, [5, 8])
    expected = greedy_continuations_uncached(model, prefixes, 8)
    model.generation_config.repetition_penalty = 3.0
    model.generation_config.no_repeat_ngram_size = 2
    np.testing.assert_array_equal(generate_continuations(model, prefixes, 8), expected)
    assert model.generation_config.repetition_penalty == 3.0  # restored after the probe


def test_sinks_own_mode_uses_each_sequences_id():
    model = _sharpen(memsinks.add_sinks(tiny_model("gpt2", vocab=32), memsinks.SinksConfig(p_gen=0.5))).eval()
    prefixes = _prefixes(32, [6, 4, 9])
    ids = [11, 22, 33]
    with memsinks.sinks_mode(model, "own"):
        expected = greedy_continuations_uncached(model, prefixes, 8, sequence_ids=ids)
        got = generate_continuations(model, prefixes, 8, sequence_ids=ids, batch_size=3)
        other = generate_continuations(model, prefixes, 8, sequence_ids=[44, 55, 66], batch_size=3)
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got, other)


def test_extraction_in_own_mode_defaults_to_content_ids_of_full_sequences():
    model = _sharpen(memsinks.add_sinks(tiny_model("gpt2", vocab=32), memsinks.SinksConfig(p_gen=0.5))).eval()
    seqs = _prefixes(32, [12, 12, 14], seed=3)
    with memsinks.sinks_mode(model, "own"):
        default = extraction(model, seqs, prefix_len=6, suffix_len=6)
        explicit = extraction(model, seqs, prefix_len=6, suffix_len=6,
                              sequence_ids=[memsinks.content_id(s) for s in seqs])
        prefix_ids = extraction(model, seqs, prefix_len=6, suffix_len=6,
                                sequence_ids=[memsinks.content_id(s[:6]) for s in seqs])
    np.testing.assert_array_equal(default.per_example["generated"], explicit.per_example["generated"])
    assert not np.array_equal(default.per_example["generated"], prefix_ids.per_example["generated"])


def test_sampling_is_seeded_and_leaves_global_rng_alone():
    model = tiny_model("gpt2", vocab=32).eval()
    prefixes = _prefixes(32, [5, 5])
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = generate_continuations(model, prefixes, 6, num_samples=4, top_k=8, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = generate_continuations(model, prefixes, 6, num_samples=4, top_k=8, seed=7)
    c = generate_continuations(model, prefixes, 6, num_samples=4, top_k=8, seed=8)
    assert a.shape == (2, 4, 6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sampled_extraction_counts_a_hit_if_any_sample_matches():
    model = _sharpen(tiny_model("gpt2", vocab=16), scale=8.0).eval()
    prefix = _prefixes(16, [6])[0]
    greedy = generate_continuations(model, [prefix], 4)[0].tolist()
    samples = generate_continuations(model, [prefix], 4, num_samples=16, top_k=2, seed=0)[0]
    result = extraction(model, [prefix + greedy], prefix_len=6, suffix_len=4, num_samples=16, top_k=2, seed=0)
    hit = any(list(s) == greedy for s in samples.tolist())
    assert bool(result.per_example["exact_match"][0]) is hit
    best = max(float(np.mean(np.array(s) == np.array(greedy))) for s in samples.tolist())
    assert result.token_accuracy == pytest.approx(best)


def test_wrapped_models_are_unwrapped_for_generation():
    from opacus import GradSampleModule
    from peft import LoraConfig, get_peft_model

    model = _sharpen(tiny_model("llama", vocab=32)).eval()
    prefixes = _prefixes(32, [5, 7, 4])
    plain = generate_continuations(model, prefixes, 8)
    np.testing.assert_array_equal(generate_continuations(GradSampleModule(model), prefixes, 8), plain)

    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(0))
    adapted = generate_continuations(lora, prefixes, 8)
    np.testing.assert_array_equal(adapted, greedy_continuations_uncached(lora, prefixes, 8))
    assert not np.array_equal(adapted, plain)  # the adapter is in the path, not stripped with the wrapper
