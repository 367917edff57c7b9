"""Export without sinks: stock-loadable, equal to drop mode, atomic, and refusing unsafe or broken input."""

import hashlib
import json
import os

import pytest
import torch

import memsinks
from memsinks.ablation import (
    CheckpointMismatchError, ExportVerificationError, UnsafeCheckpointError, export_without_sinks,
    load_sinks_checkpoint,
)
from memsinks.ablation import export as export_mod
from memsinks.ablation.output_dir import EXPORT_MARKER
from tests.ablation.helpers import check_in_process
from tests.conftest import run_python, tiny_model


def _save_checkpoint(path, family="gpt2", placement="split", tokenizer=None, layers=2):
    cfg = memsinks.SinksConfig(placement=placement, n_sink_units=16 if placement == "append" else None, p_gen=0.75)
    model = memsinks.add_sinks(tiny_model(family, layers=layers), cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # the zero-initialised appended sinks must matter
    model.eval().save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return model


def _tree_digest(path):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            h.update(name.encode())
            with open(os.path.join(root, name), "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def _x(vocab=128):
    return torch.randint(1, vocab, (3, 11), generator=torch.Generator().manual_seed(7))


CASES = [("gpt2", "split", True, 48), ("llama", "split", False, 64), ("qwen2", "append", True, 64)]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Each case exported once (with the command's own check in a fresh process), plus the drop-mode logits."""
    root = tmp_path_factory.mktemp("exports")
    x = _x()
    out = {}
    for family, placement, prune, width in CASES:
        name = f"{family}-{placement}-{prune}"
        ckpt = root / f"ckpt-{name}"
        model = _save_checkpoint(ckpt, family, placement)
        with torch.no_grad(), memsinks.sinks_mode(model, "drop"):
            expected = model(x).logits
        before = _tree_digest(ckpt)
        result = export_without_sinks(ckpt, root / name, prune=prune, progress=False)
        out[name] = dict(model=model, ckpt=ckpt, before=before, result=result, expected=expected, width=width,
                         pruned=placement == "split" and prune)
    return root, x, out


def test_exports_load_without_memsinks_and_equal_drop_mode(exports):
    root, x, cases = exports
    torch.save({"x": x, **{name: c["expected"] for name, c in cases.items()}}, root / "probe.pt")
    code = (
        "import json, sys, torch\n"
        "sys.modules['memsinks'] = None  # the shipped model must not need memsinks\n"
        "from transformers import AutoModelForCausalLM\n"
        f"d = torch.load({str(root / 'probe.pt')!r})\n"
        "res = {}\n"
        f"for name in {sorted(cases)!r}:\n"
        f"    m = AutoModelForCausalLM.from_pretrained({str(root)!r} + '/' + name).eval()\n"
        "    res[name] = [float((m(d['x']).logits - d[name]).abs().max()), sum(p.numel() for p in m.parameters())]\n"
        "print(json.dumps(res))\n"
    )
    res = json.loads(run_python(code, env={"PYTHONPATH": ""}, cwd=str(root)))
    for name, c in cases.items():
        diff, n_params = res[name]
        assert diff < 1e-5, name
        assert n_params == c["result"].parameters, name


def test_exports_have_the_expected_architecture_and_leave_the_input_alone(exports):
    root, _, cases = exports
    for name, c in cases.items():
        result = c["result"]
        assert _tree_digest(c["ckpt"]) == c["before"], name  # the input is never written to
        out = root / name
        assert (out / "model.safetensors").exists() and not (out / "sinks_config.json").exists(), name
        assert result.mlp_width_after == c["width"] and result.max_abs_logit_diff < 1e-4, name
        with_sinks = sum(p.numel() for p in c["model"].parameters())
        if c["pruned"]:  # split placement, pruned: fewer MLP units, a smaller model
            assert result.mlp_width_after < result.mlp_width_before and result.parameters < with_sinks, name
    assert not [n for n in os.listdir(root) if ".partial-" in n or ".old-" in n]  # no temporary directory left


@pytest.fixture
def in_process_check(monkeypatch):
    """Replace the fresh-process check by the same comparison in this process (for tests about other things)."""
    monkeypatch.setattr(export_mod, "verify_plain_export", check_in_process)


def test_export_copies_the_tokenizer(tmp_path, in_process_check):
    from memsinks.corpus import train_tokenizer

    tok = train_tokenizer(["a small text to learn a few merges from", "another one"], vocab_size=300)
    _save_checkpoint(tmp_path / "ckpt", tokenizer=tok)
    result = export_without_sinks(tmp_path / "ckpt", tmp_path / "out", progress=False)
    assert "tokenizer.json" in result.extra["tokenizer_files"]
    from transformers import AutoTokenizer

    shipped_tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert shipped_tok("another one")["input_ids"] == tok("another one")["input_ids"]


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, OSError])
def test_interrupted_export_leaves_no_output(tmp_path, monkeypatch, interruption):
    _save_checkpoint(tmp_path / "ckpt")
    seen = {}

    def interrupted(model_dir, *args, **kwargs):
        seen["files"] = sorted(os.listdir(model_dir))  # the model was written to the temporary directory ...
        raise interruption("simulated interruption during verification")

    monkeypatch.setattr(export_mod, "verify_plain_export", interrupted)
    with pytest.raises(interruption):
        export_without_sinks(tmp_path / "ckpt", tmp_path / "out", progress=False)
    assert "model.safetensors" in seen["files"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # ... and neither it nor DIR survives


def _earlier_export(path):
    """A folder standing for an earlier export: its marker (what --force may replace) and an old file."""
    path.mkdir()
    (path / "old.txt").write_text("previous export")
    (path / EXPORT_MARKER).write_text("{}")


def test_interrupted_forced_export_keeps_the_old_output(tmp_path, monkeypatch):
    _save_checkpoint(tmp_path / "ckpt")
    _earlier_export(tmp_path / "out")
    monkeypatch.setattr(export_mod, "verify_plain_export", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        export_without_sinks(tmp_path / "ckpt", tmp_path / "out", force=True, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "out"]
    assert sorted(os.listdir(tmp_path / "out")) == sorted(["old.txt", EXPORT_MARKER])


def test_forced_export_replaces_old_contents(tmp_path, in_process_check):
    _save_checkpoint(tmp_path / "ckpt")
    _earlier_export(tmp_path / "out")
    export_without_sinks(tmp_path / "ckpt", tmp_path / "out", force=True, progress=False)
    assert "old.txt" not in os.listdir(tmp_path / "out") and (tmp_path / "out" / "config.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "out"]
    assert json.loads((tmp_path / "out" / EXPORT_MARKER).read_text())["kind"] == "sinks removed"


def test_force_never_deletes_a_folder_that_is_not_an_export(tmp_path, in_process_check):
    _save_checkpoint(tmp_path / "ckpt")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"\xff\xd8 not a model")
    with pytest.raises(FileExistsError, match=f"no {EXPORT_MARKER}.*Remove it yourself"):
        export_without_sinks(tmp_path / "ckpt", tmp_path / "photos", force=True, progress=False)
    assert os.listdir(tmp_path / "photos") == ["holiday.jpg"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "photos"]


def test_verification_catches_a_wrong_model(tmp_path, monkeypatch):
    """If removal computed the wrong function, the check in the fresh process must refuse it."""
    _save_checkpoint(tmp_path / "ckpt")
    real = memsinks.remove_sinks
    monkeypatch.setattr(memsinks, "remove_sinks", lambda model, mode, prune: real(model, mode="mean"))
    with pytest.raises(ExportVerificationError, match="differ from the input's drop mode"):
        export_without_sinks(tmp_path / "ckpt", tmp_path / "out", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_refuses_non_empty_or_overlapping_output(tmp_path, in_process_check):
    _save_checkpoint(tmp_path / "ckpt")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    with pytest.raises(FileExistsError, match="--force"):
        export_without_sinks(tmp_path / "ckpt", tmp_path / "busy", progress=False)
    for out in (tmp_path / "ckpt", tmp_path / "ckpt" / "inside", tmp_path):
        with pytest.raises((ValueError, FileExistsError), match="overlaps the input|not empty"):
            export_without_sinks(tmp_path / "ckpt", out, force=True, progress=False)
    (tmp_path / "empty").mkdir()
    export_without_sinks(tmp_path / "ckpt", tmp_path / "empty", progress=False)  # an empty DIR is fine
    assert (tmp_path / "empty" / "model.safetensors").exists()


def test_pickle_checkpoint_is_refused_unless_trusted(tmp_path, in_process_check):
    model = _save_checkpoint(tmp_path / "safe")
    ckpt = tmp_path / "pickled"
    ckpt.mkdir()
    for name in ("config.json", "sinks_config.json"):
        (ckpt / name).write_bytes((tmp_path / "safe" / name).read_bytes())
    torch.save(model.state_dict(), ckpt / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="--trust-pickle"):
        export_without_sinks(ckpt, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    loaded = load_sinks_checkpoint(ckpt, trust_pickle=True)
    x = _x()
    with memsinks.sinks_mode(loaded, "own"), memsinks.sinks_mode(model, "own"):
        ids = torch.tensor([3, 4, 5])
        assert torch.equal(loaded(x, sequence_ids=ids).logits, model(x, sequence_ids=ids).logits)
    export_without_sinks(ckpt, tmp_path / "out", trust_pickle=True, progress=False)
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_pickle_is_read_with_weights_only(tmp_path, monkeypatch):
    model = _save_checkpoint(tmp_path / "ckpt")
    torch.save(model.state_dict(), tmp_path / "ckpt" / "pytorch_model.bin")
    os.remove(tmp_path / "ckpt" / "model.safetensors")
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real(*a, **k))
    load_sinks_checkpoint(tmp_path / "ckpt", trust_pickle=True)
    assert calls == [True]


def test_missing_or_mismatched_sinks_config_is_a_clear_error(tmp_path):
    plain = tmp_path / "plain"
    tiny_model("gpt2").save_pretrained(plain)
    with pytest.raises(FileNotFoundError, match="sinks_config.json"):
        export_without_sinks(plain, tmp_path / "out", progress=False)
    ckpt = tmp_path / "append"
    _save_checkpoint(ckpt, placement="append")
    cfg = json.loads((ckpt / "sinks_config.json").read_text())
    cfg["n_sink_units"] = 8  # the weights hold 16 sink units per MLP
    (ckpt / "sinks_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="does not match its weights"):
        export_without_sinks(ckpt, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_sinks_checkpoint(tmp_path / "nothing")
