"""``memsinks ablate`` and ``memsinks attribute`` end to end on a tiny trained checkpoint."""

import json
import os
import shutil

import pytest
import torch

import memsinks
from memsinks.cli import main
from tests.ablation.helpers import SUFFIX, trained_canary_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tr = trained_canary_model()
    root = tmp_path_factory.mktemp("cli")
    (root / "members.txt").write_text("\n".join(tr.story_texts) + "\n")
    (root / "canaries.txt").write_text("\n".join(tr.canary_texts) + "\n")
    (root / "delete.txt").write_text(tr.canary_texts[0] + "\n")
    (root / "heldout.txt").write_text(" ".join(tr.heldout_texts))
    # the canaries as members, cut so that the secret is the extraction target
    windows, ids, prefix = tr.canary_windows()
    (root / "canary_members.jsonl").write_text(
        "".join(json.dumps({"input_ids": w, "sequence_id": i}) + "\n" for w, i in zip(windows, ids)))
    return tr, root, prefix


def test_ablate_end_to_end_writes_the_report(files, capsys):
    tr, root, _ = files
    out, report = root / "shipped", root / "report.json"
    rc = main(["ablate", str(tr.checkpoint), "--out", str(out), "--eval-text", str(root / "heldout.txt"),
               "--members", str(root / "members.txt"), "--canaries", str(root / "canaries.txt"), "--id-kind", "content",
               "--wrap-eos", "--prefix-len", "16", "--suffix-len", "16", "--window", "32", "--canary-samples", "64",
               "--json", str(report), "--sweep", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Sinks removed" in printed and "Sink pool sweep" in printed
    rep = json.loads(report.read_text())
    rows = {(r["metric"], r["group"]): r["values"] for r in rep["rows"]}
    em = rows[("extraction exact match", "members")]
    assert em["sinks on (own)"] == 1.0 and em["sinks dropped"] == 0.0  # the stories were memorized in the sinks
    assert em["shipped model"] == em["sinks dropped"]
    ppl = rows[("held-out perplexity", "")]
    assert ppl["shipped model"] == pytest.approx(ppl["sinks dropped"], rel=1e-5)
    loss = rows[("mean loss", "members")]
    assert loss["sinks on (own)"] < loss["sinks dropped"]
    assert all(0.0 <= v <= 1.0 for v in rows[("membership-inference AUC (loss)", "")].values())
    exposure = rows[("canary exposure (mean, bits)", "")]
    assert exposure["sinks on (own)"] > exposure["sinks dropped"]
    info = rep["info"]
    assert info["parameters_shipped"] < info["parameters_with_sinks"]  # split placement: sink units pruned
    assert info["size_bytes"] == sum(os.path.getsize(out / f) for f in os.listdir(out))
    points = rep["sweep"]["points"]
    assert [p["dropped_fraction"] for p in points] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert points[0]["exact_match"] == em["sinks on (own)"] and points[-1]["exact_match"] == em["sinks dropped"]
    assert open(rep["sweep"]["png"], "rb").read(4) == b"\x89PNG"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shipped = AutoModelForCausalLM.from_pretrained(out)
    assert not memsinks.has_sinks(shipped)
    assert AutoTokenizer.from_pretrained(out)("a cat")["input_ids"] == tr.tokenizer("a cat")["input_ids"]


def test_ablate_targeted_deletion_by_text(files):
    tr, root, prefix = files
    out, report = root / "deleted", root / "deletion.json"
    rc = main(["ablate", str(tr.checkpoint), "--out", str(out), "--exclude-texts", str(root / "delete.txt"),
               "--id-kind", "content", "--wrap-eos", "--members", str(root / "canary_members.jsonl"),
               "--eval-text", str(root / "heldout.txt"), "--window", "32", "--prefix-len", str(prefix),
               "--suffix-len", str(SUFFIX), "--json", str(report), "--quiet"])
    assert rc == 0
    rep = json.loads(report.read_text())
    rows = {(r["metric"], r["group"]): r["values"] for r in rep["rows"]}
    deleted, kept = rows[("extraction exact match", "deleted")], rows[("extraction exact match", "other members")]
    assert deleted["before (own)"] == 1.0 and deleted["after (own)"] == 0.0
    assert kept["before (own)"] == kept["after (own)"] == 1.0
    ppl = rows[("held-out perplexity", "")]
    assert ppl["before (drop)"] == ppl["after (drop)"]
    assert rep["info"]["deleted_ids"] == [memsinks.content_id(tr.canaries[0])]


def test_attribute_writes_table_and_plot(files, capsys):
    tr, root, prefix = files
    rc = main(["attribute", str(tr.checkpoint), "--members", str(root / "canary_members.jsonl"),
               "--eval-text", str(root / "heldout.txt"), "--window", "32", "--prefix-len", str(prefix),
               "--suffix-len", str(SUFFIX), "--json", str(root / "attr.json"), "--png", str(root / "attr.png"),
               "--quiet"])
    assert rc == 0
    assert "attention short-circuited" in capsys.readouterr().out
    table = json.loads((root / "attr.json").read_text())
    assert table["baseline"]["exact_match"] == 1.0 and [b["block"] for b in table["blocks"]] == [0, 1]
    assert (root / "attr.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_refusals_are_clear_errors(files, tmp_path, capsys):
    tr, root, _ = files
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    assert main(["ablate", str(tr.checkpoint), "--out", str(busy), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    pickled = tmp_path / "pickled"
    shutil.copytree(tr.checkpoint, pickled)
    from safetensors.torch import load_file

    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    os.remove(pickled / "model.safetensors")
    assert main(["ablate", str(pickled), "--out", str(tmp_path / "o1"), "--quiet"]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    os.remove(pickled / "sinks_config.json")
    assert main(["ablate", str(pickled), "--out", str(tmp_path / "o2"), "--trust-pickle", "--quiet"]) == 2
    assert "sinks_config.json" in capsys.readouterr().err
    assert main(["ablate", str(tr.checkpoint), "--out", str(tmp_path / "o3"), "--members",
                 str(root / "members.txt"), "--quiet"]) == 2
    assert "--id-kind" in capsys.readouterr().err
    assert main(["ablate", str(tr.checkpoint), "--out", str(tmp_path / "o4"), "--sweep", "--quiet"]) == 2
    assert "--sweep" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["busy", "pickled"]
