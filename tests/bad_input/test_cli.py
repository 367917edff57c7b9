"""Bad input and faults against ``memsinks ablate``, ``attribute``, ``probe`` and ``demo``.

Each case asserts the exit status and that stderr names the offending value or file; the file
cases also assert that every input is byte-identical afterwards and that no temporary, partial
or empty file is left.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from memsinks import _io
from memsinks.ablation import export as export_mod
from memsinks.ablation.output_dir import EXPORT_MARKER
from memsinks.cli import main
from memsinks.probes import likelihood, membership
from tests.ablation.helpers import check_in_process
from tests.bad_input.tool_files import CONTEXT, assert_clean, snapshot, tool, write_jsonl, write_lines
from tests.conftest import REPO


@pytest.fixture
def t(tmp_path):
    t = tool(tmp_path)
    write_lines(tmp_path / "members.txt", t.texts[:4])
    write_lines(tmp_path / "nonmembers.txt", t.texts[4:8])
    write_lines(tmp_path / "heldout.txt", t.texts[8:])
    return t


@pytest.fixture
def fast_check(monkeypatch):
    """The export's check, in this process (the fresh-process check has its own tests): saves seconds per export."""
    monkeypatch.setattr(export_mod, "verify_plain_export", check_in_process)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _refused(capsys, *argv):
    """Run a command line the parser itself must refuse; returns its stderr."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    assert exc.value.code == 2
    return capsys.readouterr().err


def _probe_args(tmp_path, t):
    return ["probe", t.checkpoint, "--members", tmp_path / "members.txt", "--nonmembers", tmp_path / "nonmembers.txt",
            "--prefix-len", 8, "--suffix-len", 8, "--no-progress"]


# ------------------------------------------------------------------------------ --json never harms a file
@pytest.mark.parametrize("target", ["ckpt/config.json", "ckpt/model.safetensors", "members.txt", "heldout.txt",
                                    "ckpt/new-report.json"])
def test_ablate_json_never_writes_over_or_into_an_input(tmp_path, t, capsys, target):
    before = snapshot(tmp_path)
    code, _, err = _run(capsys, "ablate", t.checkpoint, "--out", tmp_path / "out", "--members",
                        tmp_path / "members.txt", "--id-kind", "content", "--eval-text", tmp_path / "heldout.txt",
                        "--json", tmp_path / target, "--quiet")
    assert code == 2 and str(tmp_path / target) in err and ("input file" in err or "input folder" in err)
    assert_clean(tmp_path, before)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", ["ckpt/config.json", "members.txt", "nonmembers.txt"])
def test_probe_json_never_writes_over_an_input_even_with_force(tmp_path, t, capsys, target):
    before = snapshot(tmp_path)
    code, _, err = _run(capsys, *_probe_args(tmp_path, t), "--json", tmp_path / target, "--force")
    assert code == 2 and str(tmp_path / target) in err and "never writes" in err
    assert_clean(tmp_path, before)


def test_probe_json_refuses_a_hard_link_to_an_input(tmp_path, t, capsys):
    os.link(tmp_path / "members.txt", tmp_path / "alias.json")
    before = snapshot(tmp_path)
    code, _, err = _run(capsys, *_probe_args(tmp_path, t), "--json", tmp_path / "alias.json", "--force")
    assert code == 2 and "alias.json" in err and "members.txt" in err
    assert_clean(tmp_path, before)


def test_existing_json_needs_force_and_is_then_replaced_whole(tmp_path, t, capsys):
    report = tmp_path / "report.json"
    report.write_text('{"kept": true}\n')
    before = snapshot(tmp_path)
    code, _, err = _run(capsys, *_probe_args(tmp_path, t), "--json", report)
    assert code == 2 and str(report) in err and "--force" in err
    assert_clean(tmp_path, before)
    code, _, err = _run(capsys, *_probe_args(tmp_path, t), "--json", report, "--force")
    assert code == 0, err
    assert json.loads(report.read_text())["n_members"] == 4
    assert_clean(tmp_path)


def test_json_in_a_missing_folder_or_naming_a_folder_is_refused_before_any_work(tmp_path, t, capsys):
    code, out, err = _run(capsys, *_probe_args(tmp_path, t), "--json", tmp_path / "no" / "such" / "r.json")
    assert code == 2 and str(tmp_path / "no" / "such") in err and "does not exist" in err and out == ""
    code, out, err = _run(capsys, *_probe_args(tmp_path, t), "--json", tmp_path)
    assert code == 2 and "is a folder" in err and out == ""


def test_json_inside_out_and_a_png_equal_to_the_json_are_refused(tmp_path, t, capsys):
    before = snapshot(tmp_path)
    base = ["ablate", t.checkpoint, "--out", tmp_path / "out", "--members", tmp_path / "members.txt",
            "--id-kind", "content", "--eval-text", tmp_path / "heldout.txt", "--quiet"]
    code, _, err = _run(capsys, *base, "--json", tmp_path / "out" / "r.json")
    assert code == 2 and "inside the output folder" in err and str(tmp_path / "out") in err
    code, _, err = _run(capsys, *base, "--json", tmp_path / "r.json", "--sweep", "--sweep-png", tmp_path / "r.json")
    assert code == 2 and "name the same file" in err
    assert_clean(tmp_path, before)
    assert not (tmp_path / "out").exists()


def test_disk_full_while_writing_json_leaves_nothing_and_says_one_line(tmp_path, t, capsys, monkeypatch):
    real = _io._write_all

    def full(fd, data):
        real(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_io, "_write_all", full)
    before = snapshot(tmp_path)
    report = tmp_path / "report.json"
    code, _, err = _run(capsys, *_probe_args(tmp_path, t), "--json", report)
    assert code == 2
    line = [x for x in err.splitlines() if "error" in x]
    assert len(line) == 1 and "No space left on device" in line[0] and str(report) in line[0]
    assert not report.exists()
    assert_clean(tmp_path, before)


def test_attribute_refuses_an_existing_png(tmp_path, t, capsys):
    write_jsonl(tmp_path / "m.jsonl", [{"input_ids": t.tokenizer(x)["input_ids"]} for x in t.texts[:2]])
    (tmp_path / "plot.png").write_bytes(b"\x89PNG old plot")
    before = snapshot(tmp_path)
    code, _, err = _run(capsys, "attribute", t.checkpoint, "--members", tmp_path / "m.jsonl", "--id-kind", "content",
                        "--eval-text", tmp_path / "heldout.txt", "--png", tmp_path / "plot.png", "--quiet")
    assert code == 2 and str(tmp_path / "plot.png") in err and "already exists" in err
    assert_clean(tmp_path, before)


# ------------------------------------------------------------------- --out: races, --force, partial folders
_DRIVER = """
import os, sys, time
import torch
from transformers import AutoModelForCausalLM
import memsinks.ablation.export as export
import memsinks.ablation.output_dir as output_dir

def check(model_dir, input_ids, expected, dtype):  # the fresh-process check has its own tests
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return float((model(input_ids).logits - expected).abs().max())

export.verify_plain_export = check
hold = os.environ.get("HOLD_DIR")
if hold:  # wait, with the export written and checked, until told to place it
    place = output_dir._move_into_place
    def held(tmp, out, force):
        open(os.path.join(hold, "ready"), "w").write("1")
        while not os.path.exists(os.path.join(hold, "go")):
            time.sleep(0.05)
        place(tmp, out, force)
    output_dir._move_into_place = held
from memsinks.cli import main
from memsinks.probes import likelihood, membership
sys.exit(main(sys.argv[1:]))
"""


def test_two_runs_racing_to_one_out_the_second_fails_and_says_so(tmp_path, t):
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    (ctl / "driver.py").write_text(_DRIVER)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, str(ctl / "driver.py"), "ablate", str(t.checkpoint), "--out", str(out), "--quiet"]
    before = snapshot(t.checkpoint)
    second = subprocess.Popen(argv, env={**env, "HOLD_DIR": str(ctl)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (ctl / "ready").exists():  # the second run checked --out (absent) and holds a finished export
        assert second.poll() is None, second.communicate()[1]
        assert time.time() < deadline
        time.sleep(0.05)
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    placed = snapshot(out)
    (ctl / "go").write_text("1")
    _, err = second.communicate(timeout=300)
    assert second.returncode == 2 and str(out) in err and "appeared while this export ran" in err
    assert snapshot(out) == placed  # the first run's export is untouched
    assert_clean(tmp_path, before)


@pytest.mark.parametrize("with_marker", [False, True])
def test_force_replaces_an_earlier_export_and_nothing_else(tmp_path, t, capsys, fast_check, with_marker):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    if with_marker:
        (folder / EXPORT_MARKER).write_text("{}")
    before = snapshot(tmp_path)
    code, _, err = _run(capsys, "ablate", t.checkpoint, "--out", folder, "--force", "--quiet")
    if with_marker:
        assert code == 0, err
        assert not (folder / "thesis.tex").exists() and (folder / "model.safetensors").is_file()
    else:
        assert code == 2 and str(folder) in err and EXPORT_MARKER in err and "Remove it yourself" in err
        assert_clean(tmp_path, before)


def test_a_killed_export_leaves_partials_that_the_next_run_removes_and_names(tmp_path, t, capsys, caplog,
                                                                             fast_check, monkeypatch):
    temp_root = tmp_path / "system-tmp"
    temp_root.mkdir()
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(temp_root)}
    proc = subprocess.Popen([sys.executable, "-m", "memsinks", "ablate", str(t.checkpoint), "--out", str(out),
                             "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 300
    while not list(temp_root.glob("memsinks-verify-*/probe.safetensors")):  # written, now checked in a fresh process
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    left = list(tmp_path.glob(".out.partial-*")) + list(temp_root.glob("memsinks-verify-*"))
    assert len(left) == 2 and not out.exists()
    unmarked = tmp_path / f".out.partial-{proc.pid}-killedearly"  # killed before it could write its marker
    unmarked.mkdir()
    left.append(unmarked)
    before = snapshot(t.checkpoint)
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
    with caplog.at_level(logging.WARNING, logger="memsinks"):
        code, _, err = _run(capsys, "ablate", t.checkpoint, "--out", out, "--quiet")
    assert code == 0, err
    for path in left:
        assert not path.exists() and str(path) in caplog.text
    assert (out / "model.safetensors").is_file()
    assert_clean(tmp_path, before)


def test_stale_cleaning_leaves_a_running_or_foreign_folder_alone_and_ages_out_the_rest(tmp_path):
    from memsinks.ablation.output_dir import PARTIAL_MARKER, clean_stale, make_owned_dir

    running = make_owned_dir(str(tmp_path), ".out.partial-")  # this process is alive
    foreign = tmp_path / ".out.partial-notours"
    foreign.mkdir()
    (foreign / "data.bin").write_bytes(b"someone else's")
    before = snapshot(foreign)
    assert clean_stale(str(tmp_path), ".out.partial-", "partial export folder(s)") == []
    assert os.path.isdir(running) and snapshot(foreign) == before
    marker = os.path.join(running, PARTIAL_MARKER)
    info = json.loads(open(marker).read())
    with open(marker, "w") as f:
        json.dump({**info, "started": info["started"] - 2 * 24 * 3600}, f)  # two days old: its PID may be reused
    assert clean_stale(str(tmp_path), ".out.partial-", "partial export folder(s)") == [running]
    assert not os.path.exists(running) and foreign.is_dir()


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_the_exported_folder_follows_the_umask(tmp_path, t, capsys, fast_check, mask):
    old = os.umask(mask)
    try:
        code, _, err = _run(capsys, "ablate", t.checkpoint, "--out", tmp_path / "out", "--quiet")
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~mask


def test_disk_full_during_the_export_removes_the_partial_folder_and_says_one_line(tmp_path, t, capsys, fast_check,
                                                                                   monkeypatch):
    def full(checkpoint, out):
        (open(os.path.join(out, "tokenizer.json"), "w")).write("{")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_mod, "copy_tokenizer", full)
    before = snapshot(tmp_path)
    code, _, err = _run(capsys, "ablate", t.checkpoint, "--out", tmp_path / "out", "--quiet")
    assert code == 2
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "No space left on device" in lines[0] and str(tmp_path / "out") in lines[0]
    assert not (tmp_path / "out").exists()
    assert_clean(tmp_path, before)


def test_disk_full_reported_by_safetensors_is_one_line_too(tmp_path, t, capsys, fast_check, monkeypatch):
    from transformers import PreTrainedModel

    class SafetensorError(Exception):  # what safetensors raises: not an OSError
        pass

    def full(self, directory, **kwargs):
        (open(os.path.join(directory, "model.safetensors"), "wb")).write(b"\0" * 10)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    before = snapshot(tmp_path)
    code, _, err = _run(capsys, "ablate", t.checkpoint, "--out", tmp_path / "out", "--quiet")
    assert code == 2 and "No space left on device while writing" in err and str(tmp_path / "out") in err
    assert_clean(tmp_path, before)


def test_quiet_hides_the_loading_bars(tmp_path, t, capsys, fast_check):
    code, _, err = _run(capsys, "ablate", t.checkpoint, "--out", tmp_path / "loud")
    assert code == 0 and ("Loading weights" in err or "Writing model shards" in err)  # what --quiet must hide
    code, _, err = _run(capsys, "ablate", t.checkpoint, "--out", tmp_path / "quiet", "--quiet")
    assert code == 0 and "Loading weights" not in err and "Writing model shards" not in err and "%|" not in err


# ---------------------------------------------------------------------------------- a corrupted model
def test_a_damaged_weight_is_not_shipped_as_matching(tmp_path, t, capsys, fast_check):
    from safetensors.torch import load_file, save_file

    weights = load_file(t.checkpoint / "model.safetensors")
    weights["transformer.ln_f.weight"][3] = 2.0 ** 60  # an exponent bit flipped
    save_file(weights, t.checkpoint / "model.safetensors", metadata={"format": "pt"})
    before = snapshot(tmp_path)
    code, _, err = _run(capsys, "ablate", t.checkpoint, "--out", tmp_path / "out", "--quiet")
    assert code == 1 and str(t.checkpoint) in err and "look damaged" in err and "e+" in err
    assert not (tmp_path / "out").exists()
    assert_clean(tmp_path, before)


def test_the_tolerance_does_not_grow_with_absurd_logits():
    huge = torch.full((2, 3), 5e6)
    assert export_mod.logit_tolerance(torch.float32, huge) < 0.02  # a 0.5 difference is refused
    assert export_mod.logit_tolerance(torch.float32, torch.full((2, 3), 30.0)) == pytest.approx(1e-4 + 30e-4)
    assert export_mod.logit_tolerance(torch.float32, torch.zeros(2, 3)) == pytest.approx(1e-4)  # the floor


def test_the_report_states_the_tolerance_and_the_scale(tmp_path, t, capsys, fast_check):
    code, out, err = _run(capsys, "ablate", t.checkpoint, "--out", tmp_path / "out", "--eval-text",
                          tmp_path / "heldout.txt", "--window", 16, "--json", tmp_path / "r.json", "--quiet")
    assert code == 0, err
    info = json.loads((tmp_path / "r.json").read_text())["info"]
    assert 0 <= info["max_abs_logit_diff"] <= info["logit_tolerance"] and info["max_abs_logit"] > 0
    assert "within a tolerance of" in out


# ------------------------------------------------------------------------------- bad options and inputs
@pytest.mark.parametrize("value", ["", " , "])
def test_empty_exclude_ids_is_an_error_not_full_removal(tmp_path, t, capsys, value):
    before = snapshot(tmp_path)
    code, _, err = _run(capsys, "ablate", t.checkpoint, "--out", tmp_path / "out", "--exclude-ids", value, "--quiet")
    assert code == 2 and "--exclude-ids" in err and "at least one" in err
    assert not (tmp_path / "out").exists()
    assert_clean(tmp_path, before)


@pytest.mark.parametrize("option", ["--members", "--eval-text", "--canaries", "--json", "--exclude-texts", "--out"])
def test_an_empty_path_is_refused_by_the_parser(tmp_path, t, capsys, option):
    argv = ["ablate", t.checkpoint, "--out", tmp_path / "out", option, "", "--quiet"]
    err = _refused(capsys, *argv)
    assert f"argument {option}" in err and "empty path" in err


@pytest.mark.parametrize("argv", [["--prefix-len", "0"], ["--batch-size", "-2"], ["--window", "x"]])
def test_non_positive_counts_are_refused(tmp_path, t, capsys, argv):
    err = _refused(capsys, "ablate", t.checkpoint, "--out", tmp_path / "out", *argv)
    assert f"argument {argv[0]}" in err and argv[1] in err


def test_demo_with_a_missing_local_file_fails_before_any_download(tmp_path, capsys, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("went to the Hub"))
    for missing in ("nonexistent.txt", str(tmp_path / "corpus"), "./data/train.jsonl"):
        err = _refused(capsys, "demo", "--quick", "--data", missing)
        assert missing in err and "does not exist" in err


def _ablate_members(tmp_path, t, capsys, members, *extra):
    return _run(capsys, "ablate", t.checkpoint, "--out", tmp_path / "out", "--members", members, "--id-kind",
                "content", "--prefix-len", 8, "--suffix-len", 8, "--quiet", *extra)


@pytest.mark.parametrize("record, shown", [({"input_ids": [1, 2, 3.7], "sequence_id": 5}, "3.7"),
                                           ({"input_ids": [1, "2", 3], "sequence_id": 5}, "'2'"),
                                           ({"input_ids": list(range(20)), "sequence_id": 3.7}, "3.7"),
                                           ({"input_ids": list(range(20)), "sequence_id": "12"}, "'12'"),
                                           ({"input_ids": list(range(20)), "sequence_id": True}, "True")])
def test_ablate_members_are_never_cast(tmp_path, t, capsys, record, shown):
    members = write_jsonl(tmp_path / "m.jsonl", [{"input_ids": list(range(20)), "sequence_id": 1}, record])
    before = snapshot(tmp_path)
    code, _, err = _ablate_members(tmp_path, t, capsys, members)
    assert code == 2 and f"{members}:2" in err and shown in err
    assert not (tmp_path / "out").exists()
    assert_clean(tmp_path, before)


def test_ablate_refuses_token_ids_outside_the_vocabulary_before_exporting(tmp_path, t, capsys):
    vocab = len(t.tokenizer)
    members = write_jsonl(tmp_path / "m.jsonl", [{"input_ids": list(range(20))}, {"input_ids": [5] * 19 + [vocab]}])
    before = snapshot(tmp_path)
    code, _, err = _ablate_members(tmp_path, t, capsys, members)
    assert code == 2 and f"{members}:2" in err and f"token ID {vocab}" in err
    assert not (tmp_path / "out").exists()
    assert_clean(tmp_path, before)


def test_ablate_names_a_binary_members_file(tmp_path, t, capsys):
    members = tmp_path / "members.bin"
    members.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    before = snapshot(tmp_path)
    code, _, err = _ablate_members(tmp_path, t, capsys, members)
    assert code == 2 and str(members) in err and "not a text file" in err
    assert_clean(tmp_path, before)


def test_ablate_extraction_longer_than_the_context_is_refused_before_exporting(tmp_path, t, capsys):
    before = snapshot(tmp_path)
    code, _, err = _run(capsys, "ablate", t.checkpoint, "--out", tmp_path / "out", "--members",
                        tmp_path / "members.txt", "--id-kind", "content", "--prefix-len", CONTEXT, "--suffix-len", 8,
                        "--quiet")
    assert code == 2 and f"context is {CONTEXT} tokens" in err and f"prefix_len={CONTEXT}" in err
    assert not (tmp_path / "out").exists()
    assert_clean(tmp_path, before)


def test_ablate_measures_members_longer_than_the_context(tmp_path, t, capsys, caplog, fast_check, monkeypatch):
    monkeypatch.setattr(likelihood, "_said_windowed", set())
    members = write_lines(tmp_path / "long.txt", [t.long_text, t.long_text + " again"])
    with caplog.at_level(logging.WARNING, logger="memsinks"):
        code, _, err = _ablate_members(tmp_path, t, capsys, members, "--json", tmp_path / "r.json")
    assert code == 0, err
    rows = {(r["metric"], r["group"]): r["values"] for r in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert all(v > 0 for v in rows[("mean loss", "members")].values())
    assert caplog.text.count(f"longer than the model's {CONTEXT}-token context") == 1


def test_ablate_without_a_tokenizer_needs_one_for_canaries(tmp_path, t, capsys):
    for name in os.listdir(t.checkpoint):
        if name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            os.remove(t.checkpoint / name)
    members = write_jsonl(tmp_path / "m.jsonl", [{"input_ids": list(range(20))}])
    canaries = write_jsonl(tmp_path / "c.jsonl", [{"input_ids": list(range(20))}])
    before = snapshot(tmp_path)
    code, _, err = _ablate_members(tmp_path, t, capsys, members, "--canaries", canaries)
    assert code == 2 and str(t.checkpoint) in err and "no tokenizer" in err
    assert_clean(tmp_path, before)


# ------------------------------------------------------------------------------------ memsinks probe
@pytest.mark.parametrize("field, value", [("sequence_id", 3.7), ("sequence_id", "12"), ("sequence_id", False),
                                          ("sequence_id", 2 ** 63), ("doc_id", 1.5)])
def test_probe_reader_never_casts_ids(tmp_path, t, capsys, field, value):
    members = write_jsonl(tmp_path / "m.jsonl", [{"text": t.texts[0], field: 1 if field == "sequence_id" else "a"},
                                                 {"text": t.texts[1], field: value}])
    before = snapshot(tmp_path)
    args = _probe_args(tmp_path, t)
    args[args.index("--members") + 1] = members
    code, _, err = _run(capsys, *args)
    assert code == 2 and f"{members}:2" in err and repr(value).strip("'") in err
    assert_clean(tmp_path, before)


def test_probe_refuses_token_ids_outside_the_vocabulary(tmp_path, t, capsys):
    vocab = len(t.tokenizer)
    members = write_jsonl(tmp_path / "m.jsonl", [{"input_ids": list(range(20))}, {"input_ids": [vocab + 7] * 20}])
    args = _probe_args(tmp_path, t)
    args[args.index("--members") + 1] = members
    code, out, err = _run(capsys, *args)
    assert code == 2 and f"{members}:2" in err and f"token ID {vocab + 7}" in err and out == ""


@pytest.mark.parametrize("content, says", [(b"abc\x00def\n", "not a text file"),
                                           (b"caf\xe9 au lait\n", "not UTF-8")])
def test_probe_names_a_binary_or_non_utf8_file(tmp_path, t, capsys, content, says):
    members = tmp_path / "m.txt"
    members.write_bytes(content)
    args = _probe_args(tmp_path, t)
    args[args.index("--members") + 1] = members
    code, _, err = _run(capsys, *args)
    assert code == 2 and str(members) in err and says in err and "line 1" in err


def test_probe_without_a_tokenizer_skips_zlib_with_a_warning(tmp_path, t, capsys, caplog, monkeypatch):
    monkeypatch.setattr(membership, "_said_no_zlib", False)
    for name in os.listdir(t.checkpoint):
        if name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            os.remove(t.checkpoint / name)
    ids = [t.tokenizer(x)["input_ids"] for x in t.texts[:8]]
    members = write_jsonl(tmp_path / "m.jsonl", [{"input_ids": i} for i in ids[:4]])
    nonmembers = write_jsonl(tmp_path / "n.jsonl", [{"input_ids": i} for i in ids[4:]])
    with caplog.at_level(logging.WARNING, logger="memsinks"):
        code, out, err = _run(capsys, "probe", t.checkpoint, "--members", members, "--nonmembers", nonmembers,
                              "--prefix-len", 8, "--suffix-len", 8, "--no-progress", "--json", tmp_path / "r.json")
    assert code == 0, err
    assert set(json.loads((tmp_path / "r.json").read_text())["membership"]["auc"]) == {"loss", "minkprob"}
    assert "zlib" in caplog.text and "no tokenizer" in caplog.text
    code, _, err = _run(capsys, "probe", t.checkpoint, "--members", tmp_path / "members.txt", "--nonmembers",
                        nonmembers, "--no-progress")
    assert code == 2 and f"{tmp_path / 'members.txt'}:1" in err and "no tokenizer" in err


def test_probe_scores_members_longer_than_the_context(tmp_path, t, capsys, caplog, monkeypatch):
    monkeypatch.setattr(likelihood, "_said_windowed", set())
    members = write_lines(tmp_path / "long.txt", [t.long_text, t.long_text + " again"])
    args = _probe_args(tmp_path, t)
    args[args.index("--members") + 1] = members
    with caplog.at_level(logging.WARNING, logger="memsinks"):
        code, out, err = _run(capsys, *args)
    assert code == 0, err
    assert "memorized bits in members" in out
    assert caplog.text.count(f"longer than the model's {CONTEXT}-token context") == 1


def test_probe_extraction_longer_than_the_context_is_refused(tmp_path, t, capsys):
    args = _probe_args(tmp_path, t)
    args[args.index("--prefix-len") + 1] = CONTEXT
    code, out, err = _run(capsys, *args)
    assert code == 2 and f"context is {CONTEXT} tokens" in err and out == ""


def test_probe_refuses_a_plain_model_with_a_missing_tensor(tmp_path, t, capsys):
    from safetensors.torch import load_file, save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    plain = tmp_path / "plain"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=CONTEXT,
                               vocab_size=len(t.tokenizer))).save_pretrained(plain)
    t.tokenizer.save_pretrained(plain)
    weights = load_file(plain / "model.safetensors")
    del weights["transformer.h.0.mlp.c_fc.weight"]
    save_file(weights, plain / "model.safetensors", metadata={"format": "pt"})
    before = snapshot(tmp_path)
    args = _probe_args(tmp_path, t)
    args[1] = plain
    code, out, err = _run(capsys, *args)
    assert code == 2 and str(plain) in err and "transformer.h.0.mlp.c_fc.weight" in err and out == ""
    assert_clean(tmp_path, before)


def test_probe_names_a_damaged_tokenizer_or_weight_file(tmp_path, t, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    (t.checkpoint / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    before = snapshot(tmp_path)
    code, out, err = _run(capsys, *_probe_args(tmp_path, t))
    assert code == 2 and str(t.checkpoint) in err and "tokenizer" in err and out == ""
    assert_clean(tmp_path, before)
    plain = tmp_path / "plain"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=CONTEXT,
                               vocab_size=len(t.tokenizer))).save_pretrained(plain)
    weights = (plain / "model.safetensors").read_bytes()
    (plain / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    args = _probe_args(tmp_path, t)
    args[1] = plain
    code, out, err = _run(capsys, *args)
    assert code == 2 and str(plain) in err and "damaged or truncated" in err and out == ""
