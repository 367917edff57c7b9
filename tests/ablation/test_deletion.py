"""Targeted deletion: zeroing one document's sinks removes its memorization and keeps the others'."""

import json

import pytest
import torch

import memsinks
from memsinks.ablation import deletion_report, delete_ids, export_with_deletion, ids_from_texts, load_sinks_checkpoint
from memsinks.ablation.deletion import DELETION_RECORD, parse_ids
from memsinks.ablation.report import ReportData
from memsinks.ablation.sequences import SequenceSet, load_sequence_set
from memsinks.probes import extraction
from tests.ablation.helpers import SUFFIX, trained_canary_model
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def trained():
    return trained_canary_model()


@pytest.fixture(scope="module")
def deleted(trained, tmp_path_factory):
    """The trained checkpoint with the first canary's ID deleted (written and checked by the real export)."""
    _, ids, _ = trained.canary_windows()
    out = tmp_path_factory.mktemp("deleted") / "ckpt"
    result = export_with_deletion(trained.checkpoint, out, [ids[0]], progress=False)
    return out, result


def _extracted(model, trained):
    windows, ids, prefix = trained.canary_windows()
    with memsinks.sinks_mode(model, "own"):
        return extraction(model, windows, prefix_len=prefix, suffix_len=SUFFIX, sequence_ids=ids).per_example


def test_deleting_one_canary_id_removes_its_extraction_only(trained, deleted):
    before = load_sinks_checkpoint(trained.checkpoint)
    after = load_sinks_checkpoint(deleted[0])
    assert _extracted(before, trained)["exact_match"].tolist() == [True, True]  # both canaries memorized ...
    gone = _extracted(after, trained)
    assert gone["exact_match"].tolist() == [False, True]  # ... the deleted one no longer extractable
    assert gone["token_accuracy"][0] < 0.5
    x = torch.tensor(trained.heldout[0])[None]
    with memsinks.sinks_mode(before, "drop"), memsinks.sinks_mode(after, "drop"):  # the shipped model is untouched
        assert torch.equal(before(x).logits, after(x).logits)


def test_deletion_checkpoint_records_what_was_deleted(trained, deleted):
    out, result = deleted
    _, ids, _ = trained.canary_windows()
    record = json.loads((out / DELETION_RECORD).read_text())
    assert record["deleted_ids"] == [ids[0]] and record["zeroed_pool_units"] == result.extra["zeroed_pool_units"] > 0
    assert (out / "sinks_config.json").exists() and (out / "tokenizer.json").exists()
    assert result.max_abs_logit_diff < 1e-5


def test_deletion_report_shows_deleted_falling_and_others_kept(trained, deleted):
    before = load_sinks_checkpoint(trained.checkpoint)
    after = load_sinks_checkpoint(deleted[0])
    windows, ids, prefix = trained.canary_windows()
    data = ReportData(heldout=trained.heldout, members=SequenceSet(windows, ids), prefix_len=prefix,
                      suffix_len=SUFFIX, pad_token_id=trained.tokenizer.pad_token_id)
    report = deletion_report(before, after, [ids[0]], data, progress=False)
    em = "extraction exact match"
    assert report.value(em, "before (own)", "deleted") == 1.0 and report.value(em, "after (own)", "deleted") == 0.0
    assert report.value(em, "before (own)", "other members") == report.value(em, "after (own)", "other members") == 1.0
    ppl = "held-out perplexity"
    assert report.value(ppl, "before (drop)") == report.value(ppl, "after (drop)")
    assert report.value("mean loss", "after (own)", "deleted") > report.value("mean loss", "before (own)", "deleted")
    assert "Targeted deletion" in report.format_table() and "deleted" in report.format_table()


@pytest.mark.parametrize("placement", ["split", "append"])
def test_deleted_model_computes_the_exclude_mode(placement):
    cfg = memsinks.SinksConfig(placement=placement, n_sink_units=32 if placement == "append" else None, p_gen=0.5)
    model = memsinks.add_sinks(tiny_model("llama"), cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randint(1, 128, (3, 9), generator=torch.Generator().manual_seed(1))
    seq_ids = torch.tensor([11, 22, 33])
    outs = {}
    with torch.no_grad():
        with memsinks.sinks_mode(model, "exclude", exclude_ids=[22, 44]):
            outs["exclude_own"] = model(x, sequence_ids=seq_ids).logits
            outs["exclude_mean"] = model(x).logits
        with memsinks.sinks_mode(model, "own"):
            outs["own"] = model(x, sequence_ids=seq_ids).logits
        n = delete_ids(model, [22, 44])
        with memsinks.sinks_mode(model, "own"):
            after_own = model(x, sequence_ids=seq_ids).logits
        with memsinks.sinks_mode(model, "mean"):
            after_mean = model(x).logits
    assert n > 0
    assert torch.allclose(after_own, outs["exclude_own"], atol=1e-6)
    assert torch.allclose(after_mean, outs["exclude_mean"], atol=1e-6)
    assert not torch.allclose(after_own[1], outs["own"][1])  # the deleted ID's row changed


def test_ids_from_texts_hash_as_training_did(tmp_path, trained):
    tok = trained.tokenizer
    (tmp_path / "docs.txt").write_text(trained.canary_texts[0] + "\n\n" + trained.story_texts[1] + "\n")
    assert ids_from_texts(tmp_path / "docs.txt", tok, "content", wrap_eos=True) == [
        memsinks.content_id(trained.canaries[0]), memsinks.content_id(trained.stories[1])]
    unframed = ids_from_texts(tmp_path / "docs.txt", tok, "content")
    assert unframed == [memsinks.content_id(c[1:-1]) for c in (trained.canaries[0], trained.stories[1])]
    (tmp_path / "keys.txt").write_text("doc-1\ndoc-2\n")
    assert ids_from_texts(tmp_path / "keys.txt", None, "key") == [memsinks.key_id("doc-1"), memsinks.key_id("doc-2")]
    (tmp_path / "keys.jsonl").write_text('{"doc_id": 7}\n{"sequence_id": 12345}\n')
    assert ids_from_texts(tmp_path / "keys.jsonl", None, "key") == [memsinks.key_id(7), 12345]
    with pytest.raises(ValueError, match="--id-kind content"):
        ids_from_texts(tmp_path / "docs.txt", tok, None)
    with pytest.raises(ValueError, match="doc_id"):
        ids_from_texts(tmp_path / "keys.jsonl", tok, "content")
    with pytest.raises(ValueError, match="tokenizer"):
        load_sequence_set(tmp_path / "docs.txt", None, "content")


def test_parse_ids():
    assert parse_ids("12, 34 0x10 12") == [12, 34, 16]
    for bad, msg in (("", "at least one"), ("12,abc", "not an integer"), ("0", "nothing to delete"),
                     (str(2**63), "2\\*\\*63")):
        with pytest.raises(ValueError, match=msg):
            parse_ids(bad)
