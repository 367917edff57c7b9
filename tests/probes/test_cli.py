"""``memsinks probe`` on saved tiny models: the table, the JSON, and the errors."""

from __future__ import annotations

import json

import pytest
import torch

import memsinks
from memsinks.cli import main
from memsinks.corpus import make_demo_corpus, train_tokenizer
from memsinks.probes import ProbeSet, membership_inference, sink_gap

P = S = 8


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gpt2(vocab, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=256, vocab_size=vocab,
                                      bos_token_id=0, eos_token_id=0, pad_token_id=0))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A sinks checkpoint, a plain model and a reference (same tokenizer), and probe files."""
    root = tmp_path_factory.mktemp("probe_cli")
    corpus = make_demo_corpus(n_train=16, n_repeated=4, n_heldout=6, n_canaries=1, sentences=2, canary_digits=2)
    tok = train_tokenizer(corpus.train + corpus.heldout + corpus.canaries, vocab_size=300)
    dirs = {}
    for name, model in (("sinks", memsinks.add_sinks(_gpt2(len(tok)), memsinks.SinksConfig(p_gen=0.5))),
                        ("plain", _gpt2(len(tok))), ("reference", _gpt2(len(tok), seed=1))):
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
        tok.save_pretrained(dirs[name])
    (root / "members.txt").write_text("\n".join(corpus.train[:6]) + "\n", encoding="utf-8")
    (root / "nonmembers.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus.heldout),
                                           encoding="utf-8")
    (root / "canaries.txt").write_text(corpus.canaries[0] + "\n", encoding="utf-8")
    return dict(root=root, dirs=dirs, tok=tok, corpus=corpus)


def _run(capsys, *argv):
    code = main(["probe", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_probe_on_a_sinks_checkpoint_prints_a_table_and_writes_json(saved, capsys):
    root = saved["root"]
    code, out, err = _run(capsys, saved["dirs"]["sinks"], "--members", root / "members.txt", "--nonmembers",
                          root / "nonmembers.jsonl", "--canaries", root / "canaries.txt", "--prefix-len", P,
                          "--suffix-len", S, "--json", root / "out.json")
    assert code == 0, err
    assert "memsinks probe" in err  # the progress bar
    for row in (f"extraction exact match ({P}+{S} tokens)", "MIA ROC AUC, loss", "MIA ROC AUC, min-k% prob",
                "memorized bits in members", "sink gap closed by dropping sinks", "canary 0 exposure (bits)",
                "6 members, 6 non-members"):
        assert row in out, row
    results = json.loads((root / "out.json").read_text(encoding="utf-8"))
    assert results["sinks"] is True and results["sinks_mode"] == "drop"
    assert results["extraction"]["n_sequences"] == 6 and results["canaries"][0]["method"] == "enumeration"
    assert results["canaries"][0]["log2_space_size"] == pytest.approx(2 * 3.321928, abs=1e-5)

    # the numbers are the library's on the same model and sets
    model = memsinks.from_pretrained(saved["dirs"]["sinks"])
    members = ProbeSet.from_file(root / "members.txt", saved["tok"]).tokens
    nonmembers = ProbeSet.from_file(root / "nonmembers.jsonl", saved["tok"]).tokens
    mia = membership_inference(model, members, nonmembers, tokenizer=saved["tok"])
    assert results["membership"]["auc"] == pytest.approx(mia.auc)
    gap = sink_gap(model, members, nonmembers, [memsinks.content_id(s) for s in members], prefix_len=P, suffix_len=S)
    assert results["sink_gap"]["loss_own"] == pytest.approx(gap.loss_own)
    assert results["sink_gap"]["loss_drop"] == pytest.approx(gap.loss_drop)

    # numbers only: no probed text in the table or the JSON
    dumped = out + json.dumps(results)
    for text in saved["corpus"].train[:6] + saved["corpus"].heldout + saved["corpus"].canaries:
        assert text[:15] not in dumped


def test_probe_on_a_plain_model_with_a_reference(saved, capsys):
    root = saved["root"]
    code, out, err = _run(capsys, saved["dirs"]["plain"], "--members", root / "members.txt", "--nonmembers",
                          root / "nonmembers.jsonl", "--reference", saved["dirs"]["reference"], "--prefix-len", P,
                          "--suffix-len", S, "--no-progress", "--json", root / "plain.json")
    assert code == 0, err
    assert "MIA ROC AUC, reference ratio" in out and "sink gap" not in out
    results = json.loads((root / "plain.json").read_text(encoding="utf-8"))
    assert set(results["membership"]["auc"]) == {"loss", "zlib", "minkprob", "reference"}
    assert results["memorized_bits"]["reference"] == "model" and results["sinks"] is False


def test_probe_errors_are_clear(saved, capsys, tmp_path):
    root = saved["root"]
    base = ["--members", root / "members.txt", "--nonmembers", root / "nonmembers.jsonl", "--no-progress"]
    code, _, err = _run(capsys, saved["dirs"]["plain"], *base)  # default 32+32 is longer than these stories
    assert code == 2 and "shorter than 64 tokens" in err and "prefix" in err
    other = tmp_path / "other"
    _gpt2(len(saved["tok"])).save_pretrained(other)
    train_tokenizer(["entirely different text for another tokenizer"] * 4, vocab_size=300).save_pretrained(other)
    code, _, err = _run(capsys, saved["dirs"]["plain"], *base, "--reference", other, "--prefix-len", P,
                        "--suffix-len", S)
    assert code == 2 and "tokenizer differs" in err
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    code, _, err = _run(capsys, saved["dirs"]["plain"], "--members", tmp_path / "empty.txt", "--nonmembers",
                        root / "nonmembers.jsonl")
    assert code == 2 and "no sequences" in err
    code, _, err = _run(capsys, tmp_path / "missing", *base)
    assert code == 2 and "does not exist" in err
