"""Dynamic soft-prompt extraction: identity-initialised generator, prompted decoding, disjointness, and the attack."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import memsinks
from memsinks.probes import DSPConfig, PromptGenerator, dsp_extraction
from memsinks.probes.soft_prompts import greedy_with_prompt, initial_prompt
from memsinks.probes.generation import greedy_continuations_uncached
from tests.conftest import tiny_model

V, P, S, M = 64, 8, 8, 4



def _gpt2(seed=0):
    return tiny_model("gpt2", vocab=V, seed=seed).eval()


def test_identity_generator_outputs_the_initial_prompt_on_a_padded_batch():
    model = _gpt2()
    init = initial_prompt(model, M, seed=3)
    gen = PromptGenerator(init, n_layers=2, n_heads=2, max_prefix_len=32).eval()
    prefixes = torch.randint(1, V, (3, P))
    mask = torch.ones(3, P, dtype=torch.long)
    mask[1, :3] = 0  # row 1 left padded, row 2 right padded
    mask[2, -2:] = 0
    embeds = model.get_input_embeddings()(prefixes)
    out = gen(embeds, mask)
    assert out.shape == (3, M, init.shape[1])
    torch.testing.assert_close(out, init.expand(3, -1, -1), rtol=0, atol=1e-6)


def test_trained_generator_is_padding_invariant():
    model = _gpt2()
    gen = PromptGenerator(initial_prompt(model, M), n_layers=1, n_heads=2, max_prefix_len=32)
    with torch.no_grad():
        for p in gen.parameters():  # move away from the identity so the prefix matters
            p.add_(0.1 * torch.randn_like(p))
    gen.eval()
    emb = model.get_input_embeddings()
    short = torch.randint(1, V, (1, 5))
    alone = gen(emb(short), torch.ones(1, 5, dtype=torch.long))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    other = gen(emb(torch.randint(1, V, (1, 8))), torch.ones(1, 8, dtype=torch.long))
    both = gen(emb(torch.cat([padded, torch.randint(1, V, (1, 8))])), torch.cat([mask, torch.ones_like(mask)]))
    torch.testing.assert_close(both[0], alone[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(alone, other, atol=1e-3)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_prompted_greedy_equals_uncached_decoding_of_the_prompt_tokens(family):
    """A prompt made of token embeddings must decode exactly like those tokens written before the prefix."""
    model = tiny_model(family, vocab=V).eval()
    emb = model.get_input_embeddings().weight.detach()
    prompt_tokens = [[5, 9, 11], [7, 2, 40]]
    prefixes = [list(range(10, 10 + P)), [30, 31, 33, 1, 20]]  # unequal lengths: a left-padded batch
    got = greedy_with_prompt(model, emb[torch.tensor(prompt_tokens)], prefixes, 6)
    want = greedy_continuations_uncached(model, [t + p for t, p in zip(prompt_tokens, prefixes)], 6)
    np.testing.assert_array_equal(got, want)


def _overlap_reference(model, prompt: torch.Tensor, prefix: list[int], n: int) -> list[int]:
    """One row, full forwards without cache: prompt at positions 0..m-1, prefix and continuation from 0."""
    tokens = list(prefix)
    m = prompt.shape[0]
    with torch.no_grad():
        for _ in range(n):
            embeds = torch.cat([prompt, model.get_input_embeddings()(torch.tensor(tokens))])[None]
            pos = torch.cat([torch.arange(m), torch.arange(len(tokens))])[None]
            tokens.append(int(model(inputs_embeds=embeds, position_ids=pos).logits[0, -1].argmax()))
    return tokens[len(prefix):]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_overlap_positions_keep_the_prefix_at_its_own_positions_in_a_padded_batch(family):
    model = tiny_model(family, vocab=V).eval()
    if family == "gpt2":  # loud position embeddings, so that where the prefix sits changes the argmax
        with torch.no_grad():
            model.transformer.wpe.weight.mul_(30)
    prompts = torch.randn(2, M, model.config.hidden_size, generator=torch.Generator().manual_seed(3)) * 0.5
    prefixes = [list(range(10, 10 + P)), [30, 31, 33, 1, 20]]  # unequal lengths: a left-padded batch
    got = greedy_with_prompt(model, prompts, prefixes, 6, prompt_positions="overlap")
    want = [_overlap_reference(model, prompts[i], prefixes[i], 6) for i in range(2)]
    np.testing.assert_array_equal(got, np.array(want))
    if family == "gpt2":
        assert not np.array_equal(got, greedy_with_prompt(model, prompts, prefixes, 6))  # the setting is used
    with pytest.raises(ValueError, match="prompt_positions"):
        DSPConfig(prompt_positions="middle")


def test_overlapping_attack_and_eval_pairs_are_refused():
    model = _gpt2()
    seqs = torch.randint(1, V, (6, P + S)).tolist()
    with pytest.raises(ValueError, match="attacker's training pairs"):
        dsp_extraction(model, seqs[:4], seqs[3:], P, S, config=DSPConfig(n_prompts=2, steps=1))
    with pytest.raises(ValueError, match="attacker's training pairs"):  # same content, different IDs
        dsp_extraction(model, seqs[:3], seqs[2:3], P, S, attack_ids=[1, 2, 3], eval_ids=[4],
                       config=DSPConfig(n_prompts=2, steps=1))


@pytest.fixture(scope="module")
def memorized():
    """A tiny GPT-2 that memorized 128 random sequences, each seen after 1-4 random context tokens.

    Prompting with the bare prefix (greedy baseline) then lacks the context the model learned
    the sequences in, which a trained prompt can supply, as in a real corpus where a memorized
    passage sits inside a document.
    """
    torch.manual_seed(0)
    model = tiny_model("gpt2", vocab=V)
    g = torch.Generator().manual_seed(1)
    data = torch.randint(1, V, (128, P + S), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(300):
        k = 1 + step % M
        x = torch.cat([torch.randint(1, V, (len(data), k), generator=g), data], dim=1)
        labels = x.clone()
        labels[:, :k] = -100
        loss = model(x, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), data.tolist()


def test_dsp_extracts_at_least_as_much_as_greedy_and_leaves_the_target_untouched(memorized):
    model, seqs = memorized
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    result = dsp_extraction(model, seqs[:96], seqs[96:], P, S,
                            config=DSPConfig(n_prompts=M, generator_layers=1, steps=200, lr=1e-3))
    d = result.to_dict()
    assert (d["n_attack"], d["n_eval"]) == (96, 32)
    assert not set(result.attack_ids) & set(result.eval_ids)
    assert len(set(result.eval_ids)) == 32
    for kind in ("no_prompt", "static", "dsp"):
        assert set(d[kind]) >= {"exact_match", "token_accuracy", "ngram_share", "n_sequences"}
        assert d[kind]["n_sequences"] == 32
    assert result.no_prompt.exact_match < 1.0  # the baseline leaves something to extract
    # the generator starts as the trained static prompt and keeps its best validation state
    assert d["train_loss"]["dsp"]["validation"] <= d["train_loss"]["static"]["validation"] + 1e-6
    assert d["train_loss"]["dsp"]["n_validation"] == 19 and d["train_loss"]["dsp"]["n_train"] == 77
    assert result.dsp.exact_match >= result.no_prompt.exact_match
    assert result.dsp.token_accuracy >= result.no_prompt.token_accuracy
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert [p.requires_grad for p in model.parameters()] == flags


def test_dsp_runs_on_a_sinks_model_in_drop_and_own_mode():
    model = memsinks.add_sinks(_gpt2(), memsinks.SinksConfig(p_gen=0.5)).eval()
    seqs = torch.randint(1, V, (10, P + S)).tolist()
    for mode, positions in (("drop", "shifted"), ("own", "shifted"), ("drop", "overlap")):
        cfg = DSPConfig(n_prompts=2, generator_layers=1, steps=3, prompt_positions=positions)
        with memsinks.sinks_mode(model, mode):
            r = dsp_extraction(model, seqs[:6], seqs[6:], P, S, config=cfg)
        assert r.n_eval == 4 and r.dsp.n_sequences == 4
        assert r.to_dict()["config"]["prompt_positions"] == positions


def test_cli_attack_dsp_on_a_checkpoint(tmp_path, capsys):
    import json

    from memsinks.cli import main
    from memsinks.corpus import make_demo_corpus, train_tokenizer

    corpus = make_demo_corpus(n_train=16, n_repeated=4, n_heldout=6, n_canaries=1, sentences=2, canary_digits=2)
    tok = train_tokenizer(corpus.train + corpus.heldout, vocab_size=300)
    model = memsinks.add_sinks(tiny_model("gpt2", vocab=len(tok)), memsinks.SinksConfig(p_gen=0.5))
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    (tmp_path / "members.txt").write_text("\n".join(corpus.train[:8]) + "\n", encoding="utf-8")
    (tmp_path / "non.txt").write_text("\n".join(corpus.heldout) + "\n", encoding="utf-8")
    out = tmp_path / "out.json"
    code = main(["probe", str(tmp_path / "m"), "--members", str(tmp_path / "members.txt"), "--nonmembers",
                 str(tmp_path / "non.txt"), "--prefix-len", "8", "--suffix-len", "8", "--attack", "dsp",
                 "--dsp-steps", "3", "--dsp-prompts", "2", "--json", str(out), "--no-progress"])
    assert code == 0
    table = capsys.readouterr().out
    assert "dynamic soft prompt" in table
    res = json.loads(out.read_text())
    assert (res["dsp"]["n_attack"], res["dsp"]["n_eval"]) == (4, 4)
    assert res["dsp"]["no_prompt"]["n_sequences"] == 4 and res["extraction"]["n_sequences"] == 8


def test_dsp_runs_on_an_exported_plain_model_and_matches_the_greedy_probe_baseline(tmp_path):
    from transformers import AutoModelForCausalLM

    from memsinks.probes import extraction

    model = memsinks.add_sinks(_gpt2(), memsinks.SinksConfig(p_gen=0.5))
    plain = memsinks.remove_sinks(model, mode="drop", prune=True)
    plain.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    seqs = torch.randint(1, V, (10, P + S)).tolist()
    r = dsp_extraction(loaded, seqs[:6], seqs[6:], P, S, config=DSPConfig(n_prompts=2, generator_layers=1, steps=3))
    greedy = extraction(loaded, seqs[6:], P, S)
    np.testing.assert_array_equal(r.no_prompt.per_example["generated"], greedy.per_example["generated"])
