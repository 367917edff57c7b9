"""The fine-tuning isolation benchmark: its arm selection and gap arithmetic, and a smoke run of
``benchmarks/finetune_isolation.py --quick`` that checks the files and fields it writes (a tiny stand-in
model: not the science)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
import types

import pytest

from tests.conftest import REPO, run_benchmark

sys.path.insert(0, str(REPO / "benchmarks"))

from finetune_lib import arms, report  # noqa: E402


def _main(argv: list[str]) -> None:
    """``benchmarks/finetune_isolation.py`` in this process; the first quick run goes through the script itself."""
    assert run_benchmark("finetune_isolation", argv) == 0


def test_every_selection_includes_the_standard_reference_and_unknown_arms_are_named():
    assert [a.name for a in arms.select(["sinks"])] == ["standard", "sinks"]
    assert {a.name for a in arms.select(["headline"])} == set(arms.HEADLINE)
    with pytest.raises(ValueError, match="Unknown arm.*'nope'"):
        arms.select(["nope"])


def test_later_seeds_can_run_apart_and_a_run_that_would_measure_nothing_is_refused(capsys):
    import finetune_isolation

    assert finetune_isolation.parse_args(["--first-seed", "1", "--seeds", "2", "--out", "x"]).seed_list == [1, 2]
    for argv, message in ((["--first-seed", "-1"], "--first-seed must be >= 0"),
                          (["--no-timing", "--timing-only"], "would measure nothing"),
                          (["--timing-run"], "give it with --timing-only"),
                          (["--timing-only", "--timing-run", "--timing-steps", "4"], "every step of the runs")):
        with pytest.raises(SystemExit):
            finetune_isolation.parse_args([*argv, "--out", "x"])
        assert message in capsys.readouterr().err


class _StepsInTurn:
    """A stand-in Trainer: ``steps`` steps through its callbacks as the stock Trainer calls them, each written into
    ``ran`` while it holds the turn; raises at step ``fail_at``."""

    def __init__(self, name: str, steps: int, callbacks, ran: list, fail_at: int | None = None):
        self.name, self.steps, self.callbacks, self.ran, self.fail_at = name, steps, callbacks, ran, fail_at

    def train(self):
        for step in range(self.steps):
            if step == self.fail_at:
                raise ValueError("a broken batch")
            for callback in self.callbacks:
                callback.on_step_begin(None, None, None)
            self.ran.append(self.name)
            time.sleep(0.002)
            for callback in self.callbacks:
                callback.on_step_end(None, None, None)
        return types.SimpleNamespace(training_loss=0.5 * self.steps)


def _whole_runs(monkeypatch, steps: dict, fail: dict | None = None):
    """(``whole_run_times`` over stand-in Trainers taking ``steps[arm]`` steps, the arms' steps in the order they ran);
    fails the test instead of hanging if the turns deadlock."""
    from finetune_lib import timing

    ran: list = []

    def trainer(arm, base, data, tokenizer, settings, seed, output_dir, callbacks):
        return _StepsInTurn(arm.name, steps[arm.name], callbacks, ran, (fail or {}).get(arm.name)), None, None

    monkeypatch.setattr(timing, "arm_trainer", trainer)
    result: dict = {}

    def run():
        try:
            result["times"] = timing.whole_run_times(arms.select(list(steps)), None, None, None, None, seed=0)
        except RuntimeError as err:
            result["error"] = err

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the arms' turns deadlocked"
    return result, ran


def test_the_whole_runs_take_their_steps_in_turn_and_an_arm_that_ends_early_leaves_the_rotation(monkeypatch):
    result, ran = _whole_runs(monkeypatch, {"standard": 5, "sinks_defaults": 5, "sinks": 2})
    assert ran == ["standard", "sinks_defaults", "sinks"] * 2 + ["standard", "sinks_defaults"] * 3
    times = result["times"]
    assert times["steps"] == {"standard": 5, "sinks_defaults": 5, "sinks": 2}
    for name, seconds in times["seconds"].items():
        assert times["step_time_ratios"][name] == pytest.approx(seconds / times["seconds"]["standard"])
        assert len(times["quarter_ratios"][name]) == 4
    assert times["quarter_ratios"]["standard"] == [1.0] * 4
    assert times["train_loss"] == {"standard": 2.5, "sinks_defaults": 2.5, "sinks": 1.0}


def test_an_arm_that_fails_while_timed_is_named_and_the_others_run_to_their_end(monkeypatch):
    result, ran = _whole_runs(monkeypatch, {"standard": 4, "sinks_defaults": 4}, fail={"sinks_defaults": 1})
    assert "'sinks_defaults' failed in training: a broken batch" in str(result["error"])
    assert ran == ["standard", "sinks_defaults", "standard", "standard", "standard"]


def test_the_whole_run_timing_trains_each_arm_with_the_stock_trainer_through_every_step_of_its_run(tmp_path):
    from finetune_lib.settings import FinetuneSettings

    _main(["--quick", "--timing-only", "--timing-run", "--arms", "sinks", "--out", str(tmp_path)])
    timing = json.loads((tmp_path / "timing.json").read_text())
    quick = FinetuneSettings.quick()
    rows = sum(repeats * n for repeats, n in quick.groups.items()) + quick.n_background
    steps = math.ceil(quick.epochs * math.ceil(rows / quick.batch_size))
    assert timing["timing_mode"] == "whole_run" and timing["steps"] == {"standard": steps, "sinks": steps}
    seconds = timing["seconds"]
    assert timing["step_time_ratios"]["sinks"] == pytest.approx(seconds["sinks"] / seconds["standard"])
    assert timing["train_loss"]["sinks"] > 0 and timing["train_loss"]["standard"] > 0


def test_the_arms_timed_in_lockstep_train_the_same_models_as_the_benchmark_trains_one_after_another():
    import torch

    from finetune_lib import base as bases
    from finetune_lib import data as datasets_
    from finetune_lib.settings import FinetuneSettings
    from finetune_lib.timing import whole_run_times
    from finetune_lib.train import train_arm
    from memorization_lib.data import load_text

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = FinetuneSettings.quick(tiny_pretrain_steps=10)
        text, _ = load_text(None, 50_000)
        base, tokenizer, _ = bases.tiny_stand_in(text, settings.tiny_pretrain_steps)
        data = datasets_.build(tokenizer, settings, text, 0)
        chosen = arms.select(["sinks_defaults"])
        timed = whole_run_times(chosen, base, data, tokenizer, settings, seed=0)
        alone = {arm.name: train_arm(arm, base, data, tokenizer, settings, seed=0)[1]["train_loss"] for arm in chosen}
    finally:
        torch.set_num_threads(threads)
    assert timed["train_loss"] == alone


@pytest.mark.parametrize("n", [4, 7, 81])
def test_the_quarters_of_a_run_cover_every_step_once_in_order(n):
    from finetune_lib.timing import _quarters

    parts = _quarters(list(range(n)))
    assert len(parts) == 4 and [i for part in parts for i in part] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_gap_closed_is_measured_against_standard_of_the_same_seed():
    per_seed = {0: {"standard": {"gap": 2.0}, "sinks/drop": {"gap": 0.5}},
                1: {"standard": {"gap": 1.0}, "sinks/drop": {"gap": 1.0}}}
    report.add_gap_closed(per_seed)
    assert per_seed[0]["sinks/drop"]["gap_closed"] == 0.75 and per_seed[1]["sinks/drop"]["gap_closed"] == 0.0
    summary = report.summarise(per_seed)
    assert summary["sinks/drop"]["gap_closed"] == 0.375 and summary["sinks/drop"]["seeds"] == 2


def test_an_arm_run_on_fewer_seeds_meets_its_targets_against_standard_on_the_same_seeds():
    def row(task, general, gap=1.0, extraction=1.0):
        return {"heldout_task_loss": task, "general_loss": general, "gap": gap, "extraction_exact": extraction}

    per_seed = {0: {"standard": row(1.40, 6.0), "sinks_private/drop": row(1.43, 5.9, gap=0.0, extraction=0.0)},
                1: {"standard": row(1.20, 5.6)}, 2: {"standard": row(1.20, 5.6)}}
    report.add_gap_closed(per_seed)
    summary = report.summarise(per_seed)
    line = next(t for t in report.targets(summary, per_seed) if t.startswith("with private_mask"))
    assert "1.430 vs 1.400 (within 5%: met)" in line and "5.900 vs 6.000 (no worse: met)" in line
    line = next(t for t in report.targets(summary) if t.startswith("with private_mask"))  # all seeds' mean: 1.267
    assert "1.430 vs 1.267 (within 5%: missed)" in line


def test_quick_run_writes_every_arm_and_mode(tmp_path):
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "finetune_isolation.py"), "--quick", "--threads", "1",
                    "--arms", "headline", "--seeds", "2", "--later-seed-arms", "sinks", "--out", str(out)], check=True, cwd=REPO, capture_output=True, timeout=600)
    results = json.loads((out / "results.json").read_text())
    rows = results["per_seed"]["0"]
    for name in ["standard", "lora", "dp", "sinks/drop", "sinks/own", "sinks/placebo", "sinks_private/drop",
                 "masked_private", "goldfish"]:
        assert name in rows, name
        fields = ["secret_loss", "heldout_secret_loss", "gap", "extraction_exact", "heldout_task_loss"]
        if not name.endswith(("/own", "/placebo")):  # general text has no record's sinks to switch on
            fields.append("general_loss")
        for field in fields:
            assert isinstance(rows[name][field], (int, float)), (name, field)
    assert rows["standard"]["gap_closed"] == 0.0
    for name in ["standard", "sinks/drop"]:  # each record's own figures add up to its group's
        for group in rows[name]["groups"].values():
            per_record, hits = group["secret_loss_per_record"], group["extracted_per_record"]
            assert len(per_record) == len(hits) > 0 and sum(hits) == group["extracted"]
            assert min(per_record) <= group["secret_loss"] <= max(per_record)
    later = results["per_seed"]["1"]  # the later seed runs only the named arms and the standard reference
    assert set(later) == {"standard", "sinks/drop", "sinks/own", "sinks/placebo"}
    assert results["summary"]["sinks/drop"]["seeds"] == 2 and results["summary"]["lora"]["seeds"] == 1
    assert 0.0 <= results["private_mask_coverage"]["recall"] <= 1.0
    assert (out / "results.md").read_text().startswith("# Fine-tuning isolation benchmark")
    assert (out / "tradeoff.png").stat().st_size > 0 and not list(out.glob("partial-*"))

    # an interrupted run's partial files give the same summary through --report-from
    partial = tmp_path / "partial"
    partial.mkdir()
    for rows in results["per_seed"].values():  # as if the run was killed before it timed the steps
        for row in rows.values():
            row.pop("step_time_ratio", None)
    for seed, rows in results["per_seed"].items():
        (partial / f"partial-seed{seed}.json").write_text(json.dumps(
            {"rows": rows, "private_mask_coverage": results["private_mask_coverage"]}))
    for extra in (["--timing-only", "--arms", "sinks"], ["--report-from", "--arms", "headline"]):
        _main(["--quick", *extra, "--later-seed-arms", "sinks", "--out", str(partial)])
    again = json.loads((partial / "results.json").read_text())
    assert again["config"]["assembled_from_partials"] and not list(partial.glob("partial-*"))
    for name, row in results["summary"].items():
        timed = {k: v for k, v in again["summary"][name].items() if not k.startswith("step_time_ratio")}
        assert timed == {k: v for k, v in row.items() if not k.startswith("step_time_ratio")}, name
    timing = json.loads((partial / "timing.json").read_text())
    assert again["per_seed"]["0"]["sinks/drop"]["step_time_ratio"] == timing["step_time_ratios"]["sinks"] > 0

    # partial files that record their settings are reported under those settings, not the flags' defaults
    people = {**results["config"]["settings"], "members": "people"}
    for seed, rows in results["per_seed"].items():
        (partial / f"partial-seed{seed}.json").write_text(json.dumps(
            {"rows": rows, "private_mask_coverage": results["private_mask_coverage"], "settings": people}))
    report_from = ["--quick", "--report-from", "--arms", "headline", "--later-seed-arms", "sinks",
                   "--out", str(partial)]
    with pytest.raises(SystemExit) as refused:
        _main(report_from + ["--members", "copies"])
    assert "--members copies" in str(refused.value) and "'people'" in str(refused.value)
    assert len(list(partial.glob("partial-seed*.json"))) == 2  # nothing reported, nothing removed
    _main(report_from)
    assert json.loads((partial / "results.json").read_text())["config"]["settings"]["members"] == "people"
    assert "Members: people" in (partial / "results.md").read_text()


def test_the_timed_steps_are_past_the_warm_up_so_the_shared_units_learn_in_them():
    import torch

    import memsinks
    from finetune_lib.timing import _finish_warmup
    from memsinks._small_decoder import DecoderShape, build_decoder

    shape = DecoderShape(family="llama", n_layer=2, n_embd=32, n_head=2, intermediate=64, n_kv_heads=1)
    model = memsinks.add_sinks(build_decoder(shape, 128, seed=0, token_id=0),
                               memsinks.SinksConfig(placement="append", n_sink_units=16)).train()
    assert memsinks.get_sinks_config(model).sink_warmup_steps > 0
    _finish_warmup(model)
    x = torch.randint(1, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    model(x, labels=x, sequence_ids=torch.tensor([1, 2])).loss.backward()
    shared = model.get_input_embeddings().weight.grad
    assert shared is not None and shared.abs().sum() > 0  # in the warm-up it would be zero


def test_resume_keeps_measured_arms_and_trains_only_the_new_ones(tmp_path, capsys):
    out = tmp_path / "out"
    run = ["--quick", "--no-timing", "--out", str(out)]
    _main(run + ["--arms", "standard"])
    finished = json.loads((out / "results.json").read_text())
    finished["per_seed"]["0"]["standard"]["train_seconds"] = -1.0  # a kept row is taken as it is, not measured again
    (out / "results.json").write_text(json.dumps(finished))
    capsys.readouterr()
    _main(run + ["--arms", "sinks_x16", "--resume"])
    log = capsys.readouterr().out
    assert "seed 0 standard: kept from" in log and "seed 0 sinks_x16: trained" in log
    rows = json.loads((out / "results.json").read_text())["per_seed"]["0"]
    assert rows["standard"]["train_seconds"] == -1.0
    assert "sinks_x16/drop" in rows
    # every arm already measured: nothing trains, no partial file is written, and the report is written again
    _main(run + ["--arms", "sinks_x16", "--resume"])
    log = capsys.readouterr().out
    assert ": trained" not in log and "seed 0 sinks_x16: kept from" in log
    assert json.loads((out / "results.json").read_text())["per_seed"]["0"] == rows
    assert not list(out.glob("partial-seed*.json"))


@pytest.mark.parametrize("kept", ["results.json", "partial-seed0.json", "partial-seed0.json without settings"])
def test_resume_refuses_rows_measured_under_other_settings_before_training_anything(tmp_path, kept):
    import torch

    import finetune_isolation
    from finetune_lib.settings import FinetuneSettings, to_dict

    rows = {"standard": {"heldout_task_loss": 1.0}}
    if kept == "results.json":
        content = {"config": {"settings": to_dict(FinetuneSettings.quick())}, "per_seed": {"0": rows}}
    elif kept == "partial-seed0.json":
        content = {"rows": rows, "private_mask_coverage": None, "settings": to_dict(FinetuneSettings.quick())}
    else:
        content = {"rows": rows, "private_mask_coverage": None}
    path = tmp_path / kept.split()[0]
    path.write_text(json.dumps(content))
    before, threads = path.read_bytes(), torch.get_num_threads()
    expected = r"members: 'copies' -> 'people'" if "without" not in kept else "does not record the settings"
    try:
        with pytest.raises(SystemExit, match=expected):
            finetune_isolation.main(["--quick", "--members", "people", "--resume", "--arms", "standard", "--threads",
                                     str(threads), "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_the_frozen_mlp_arm_trains_everything_but_the_pretrained_mlp_units():
    from finetune_lib import train
    from memsinks.sink_slices import sink_slices
    from tests.conftest import tiny_model

    model = train._apply(arms.ARMS["sinks_frozen_mlp"], tiny_model("llama"), settings=None)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(".mlp." in n for n in frozen)
    assert any("self_attn" in n for n, p in model.named_parameters() if p.requires_grad)
    assert all(s.param.requires_grad and s.dim is None for s in sink_slices(model))  # the appended units train


def test_the_masked_arm_gives_the_marked_tokens_no_label_and_keeps_every_other_one():
    from types import SimpleNamespace

    from finetune_lib import train
    from memsinks.corpus import train_tokenizer

    texts = ["Patient Ann Lee, phone 617 555 0134, reported a mild rash.", "No reaction was reported by the patient."]
    tokenizer = train_tokenizer(texts * 20, vocab_size=300)
    rows = [SimpleNamespace(tokens=tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    data = SimpleNamespace(training_rows=lambda: rows, record_id=lambda r, per_record=False: len(r.tokens))
    ds = train.training_dataset(data, tokenizer, arms.ARMS["masked_private"])
    for row in ds:
        assert len(row["labels"]) == len(row["input_ids"])
        for token, label, private in zip(row["input_ids"], row["labels"], row["private_mask"]):
            assert label == (-100 if private else token)
    marked = tokenizer.decode([t for t, m in zip(ds[0]["input_ids"], ds[0]["private_mask"]) if m])
    assert marked.replace(" ", "") == "6175550134" and sum(ds[1]["private_mask"]) == 0  # the phone number only
    with pytest.raises(ValueError, match="mask_private_labels needs private_mask=True"):
        arms.Arm("x", "y", mask_private_labels=True)


def test_the_dedup_arms_train_each_distinct_record_once_per_epoch_and_the_same_steps_arm_matches_standard():
    from types import SimpleNamespace

    from finetune_lib import train

    a, b, c = (SimpleNamespace(tokens=t) for t in ([5, 6, 7], [5, 6, 8], [9]))
    rows = [b, a, b, c, a, a, b, b, b]  # nine rows, three distinct records
    data = SimpleNamespace(training_rows=lambda: rows, record_id=lambda r, per_record=False: r.tokens[-1])
    for name in ("dedup", "dedup_same_steps"):
        assert train.training_rows(data, arms.ARMS[name]) == [b, a, c]  # the first copy of each, in the seed's order
    assert train.training_rows(data, arms.ARMS["standard"]) == rows
    ds = train.training_dataset(data, None, arms.ARMS["dedup"])
    assert ds["input_ids"] == [[5, 6, 8], [5, 6, 7], [9]] and ds["sequence_ids"] == [8, 7, 9]

    settings = SimpleNamespace(epochs=3.0, batch_size=2)
    assert train.training_length(data, settings, arms.ARMS["standard"]) == {"epochs": 3.0}
    assert train.training_length(data, settings, arms.ARMS["dedup"]) == {"epochs": 3.0}  # 2 batches an epoch: 6 steps
    assert train.training_length(data, settings, arms.ARMS["dedup_same_steps"]) == {"max_steps": 15}  # standard's 3 x 5
    with pytest.raises(ValueError, match="dedup_same_steps needs dedup=True"):
        arms.Arm("x", "y", dedup_same_steps=True)


def test_decay_to_base_pulls_only_the_shared_parameters_back_by_lr_times_rate_after_each_step():
    import copy

    import torch

    import memsinks
    from finetune_lib.train import DecayToBase
    from memsinks.sink_slices import sink_slices
    from tests.conftest import tiny_model

    config = memsinks.SinksConfig(placement="append", n_sink_units=16, sink_warmup_steps=0)
    model = memsinks.add_sinks(tiny_model("llama"), config).train()
    twin = copy.deepcopy(model)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt, twin_opt = (torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0) for m in (model, twin))
    callback = DecayToBase(rate=30.0)
    callback.on_train_begin(None, None, None, model=model, optimizer=opt)
    x = torch.randint(1, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    for m, o in ((model, opt), (twin, twin_opt)):
        m(x, labels=x, sequence_ids=torch.tensor([1, 2])).loss.backward()
        o.step()
    sinks = {id(s.param) for s in sink_slices(model)}
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        if id(p) in sinks:
            assert torch.equal(p, q), name
        else:  # the plain step, then 30 x 1e-2 of the way back to where training began
            want = q - 0.3 * (q - start[name])
            assert torch.allclose(p, want, atol=1e-7), name
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))
    callback.on_train_end(None, None, None)


def test_each_person_keeps_one_name_and_secret_across_distinct_records_and_people_differ():
    from finetune_lib.records import TEMPLATES, make_people

    people = make_people([5, 5, 5, 5, 1, 1], seed=3)
    assert [len(p) for p in people] == [5, 5, 5, 5, 1, 1]
    texts = [r.text for p in people for r in p]
    assert len(set(texts)) == len(texts)  # nothing for exact dedup to find
    for person in people:
        assert len({r.owner for r in person}) == 1 and len({r.secret for r in person}) == 1
        assert len({r.kind for r in person}) == 1 and all(r.owner in r.prefix for r in person)
    assert len({p[0].owner for p in people}) == len({p[0].secret for p in people}) == len(people)
    assert [p[0].kind for p in people] == ["phone", "email", "account", "phone", "phone", "email"]  # in turn
    assert len(TEMPLATES) == 4


def _people_data(members: str):
    from finetune_lib import data as data_
    from finetune_lib.records import make_records
    from finetune_lib.settings import FinetuneSettings
    from memsinks.corpus import train_tokenizer

    general = " ".join(["the quick brown fox jumps over the lazy dog"] * 60)
    tokenizer = train_tokenizer([r.text for r in make_records(40, seed=1)] + [general], vocab_size=400)
    settings = FinetuneSettings(groups={1: 2, 4: 3}, n_background=4, n_heldout=3, n_general=2, general_window=16,
                                members=members)
    return data_.build(tokenizer, settings, general, seed=0), settings


def test_people_are_scored_on_a_record_never_trained_on_and_share_one_id_across_their_records():
    from finetune_isolation import dedup_found
    from finetune_lib import train
    from finetune_lib.evaluate import _trained_firsts

    data, settings = _people_data("people")
    rows = data.training_rows()
    texts = [r.record.text for r in rows]
    assert len(rows) == 1 * 2 + 4 * 3 + settings.n_background
    for repeats, scored in data.groups.items():
        assert len(scored) == settings.groups[repeats] and not {r.record.text for r in scored} & set(texts)
        trained = data.trained[repeats]
        assert len(trained) == repeats * len(scored)
        for i, person in enumerate(scored):  # a person's records lie together, then the next person's
            own = trained[i * repeats:(i + 1) * repeats]
            assert {data.record_id(r) for r in own} == {data.record_id(person)}
            assert all(r.record.secret == person.record.secret for r in own)
            assert len({data.record_id(r, per_record=True) for r in own + [person]}) == repeats + 1
        assert _trained_firsts(data, repeats) == trained[::repeats]
    heldout_names = {r.record.owner for r in data.heldout}
    assert not heldout_names & {r.record.owner for r in rows}  # the non-members are people never trained on
    assert dedup_found(data)["exact_removed"] == 0
    by_person = train.training_dataset(data, None, arms.ARMS["sinks"])["sequence_ids"]
    by_record = train.training_dataset(data, None, arms.ARMS["sinks_record_ids"])["sequence_ids"]
    assert len(set(by_person)) == 2 + 3 + settings.n_background and len(set(by_record)) == len(rows)
    with pytest.raises(ValueError, match="per_record_ids needs sinks"):
        arms.Arm("x", "y", per_record_ids=True)

    copies, _ = _people_data("copies")
    assert copies.trained is None and dedup_found(copies)["exact_removed"] == (4 - 1) * 3
    assert copies.record_id(copies.groups[4][0]) == copies.record_id(copies.groups[4][0], per_record=True)
    with pytest.raises(ValueError, match="members must be 'copies' or 'people'; got 'persons'"):
        _people_data("persons")
