"""recipes/train.py before training: configs, accelerate configs, bad input refused with a useful message.

Everything here runs in this process in well under a second per test (no training): a wrong key,
a missing file, a missing ID column or a launch the settings cannot run under must stop the
recipe before any data is prepared or any step taken, and say what to do.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import memsinks
from tests.recipes.helpers import (ACCELERATE, RECIPES, save_tiny_base, tiny_pretrain_config, train_module,
                                  write_config)

from memsinks_recipe.common import RecipeError  # noqa: E402  (tests.recipes.helpers puts recipes/ on sys.path)
from memsinks_recipe.arguments import load_recipe  # noqa: E402
from memsinks_recipe.launch import Launch, training_arguments  # noqa: E402

CONFIGS = sorted((RECIPES / "configs").glob("*.yaml"))
DISTRIBUTED_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE",
                   "ACCELERATE_USE_FSDP", "ACCELERATE_MIXED_PRECISION")


@pytest.fixture(autouse=True)
def _no_launcher_environment(monkeypatch):
    for name in DISTRIBUTED_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tiny_config(tmp_path):
    return write_config(tmp_path / "tiny.yaml", tiny_pretrain_config(tmp_path / "run"))


def _run_main(argv, capsys) -> tuple[int, str]:
    status = train_module().main([str(a) for a in argv])
    return status, capsys.readouterr().err


# ------------------------------------------------------------------------------------------ shipped configs
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_recipe_configs_validate_and_build_training_arguments(path, tmp_path):
    text = path.read_text()
    assert text.startswith("#") and "Reproduces" in text and "Time" in text, "each config says what it is and how long"
    overrides = [("training.output_dir", str(tmp_path / "out"))]
    if "./runs/" in text:  # finetune_cpu fine-tunes pretrain_cpu's export, absent here
        overrides.append(("model.name_or_path", str(tmp_path)))
    recipe = load_recipe(str(path), overrides)
    assert recipe.sinks.placement == {"pretrain": "split", "finetune": "append"}[recipe.scenario]
    args = training_arguments(recipe, Launch(world_size=1, rank=0, engine="single"))
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == (
        recipe.global_batch_size or args.per_device_train_batch_size)


EXPECTED_LAUNCHES = {
    "single_process.yaml": ("NO", 1, None, None),
    "cpu_2proc.yaml": ("MULTI_GPU", 2, None, None),
    "multi_gpu.yaml": ("MULTI_GPU", 8, None, None),
    "fsdp.yaml": ("FSDP", 8, None, None),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 8, 2, "none"),
    "deepspeed_zero2_offload.yaml": ("DEEPSPEED", 8, 2, "cpu"),
    "deepspeed_zero3.yaml": ("DEEPSPEED", 8, 3, "none"),
    "deepspeed_zero3_offload.yaml": ("DEEPSPEED", 8, 3, "cpu"),
}


def test_accelerate_configs_parse_with_accelerate_and_say_what_they_launch():
    from accelerate.commands.config.config_args import load_config_from_file

    assert sorted(p.name for p in ACCELERATE.glob("*.yaml")) == sorted(EXPECTED_LAUNCHES)
    for name, (kind, processes, stage, offload) in EXPECTED_LAUNCHES.items():
        cfg = load_config_from_file(str(ACCELERATE / name))
        assert str(cfg.distributed_type).split(".")[-1] == kind, name
        assert cfg.num_processes == processes, name
        if stage is not None:
            assert cfg.deepspeed_config["zero_stage"] == stage, name
            assert cfg.deepspeed_config["offload_optimizer_device"] == offload, name
            if stage == 3:  # the final model is gathered for saving, then re-saved in the stock layout
                assert cfg.deepspeed_config["zero3_save_16bit_model"] is True
                assert cfg.deepspeed_config["offload_param_device"] == offload
    assert load_config_from_file(str(ACCELERATE / "cpu_2proc.yaml")).use_cpu is True
    assert load_config_from_file(str(ACCELERATE / "fsdp.yaml")).fsdp_config["fsdp_version"] == 2


# ------------------------------------------------------------------------------------------ config keys
@pytest.mark.parametrize("yaml_text, override, nearest", [
    ("sinks: {p_mme: 0.2}", None, "sinks.p_mem"),
    ("trainig: {max_steps: 3}", None, "training"),
    ("training: {p_mem: 0.2}", None, "sinks.p_mem"),  # a real key, in the wrong section
    (None, ("training.learning_rat", "0.1"), "training.learning_rate"),
    (None, ("sink.placement", "split"), "sinks.placement"),
    (None, ("probes.every_n_step", "5"), "probes.every_n_steps"),
])
def test_an_unknown_key_is_an_error_naming_the_nearest_valid_key(tmp_path, yaml_text, override, nearest):
    config = tiny_pretrain_config(tmp_path / "run")
    path = write_config(tmp_path / "c.yaml", config)
    if yaml_text is not None:
        path.write_text(path.read_text() + yaml_text + "\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(str(path), [override] if override else [])
    assert f"Did you mean '{nearest}'?" in str(err.value)


def test_model_config_keys_are_checked_against_the_architecture(tmp_path):
    path = write_config(tmp_path / "c.yaml", tiny_pretrain_config(tmp_path / "run"))
    with pytest.raises(RecipeError, match="did you mean 'n_layer'"):
        load_recipe(str(path), [("model.config.n_layr", "2")])
    with pytest.raises(RecipeError, match="space after the colon"):  # YAML reads {n_layer:2} as one key
        load_recipe(str(path), [("model.config", "{n_layer:2}")])
    recipe = load_recipe(str(path), [("model.config.n_layer", "3")])
    assert recipe.model.config["n_layer"] == 3 and recipe.model.config["n_embd"] == 32  # one key, rest kept


def test_values_are_coerced_or_refused_by_the_type_of_their_key(tmp_path):
    path = write_config(tmp_path / "c.yaml", tiny_pretrain_config(tmp_path / "run"))
    path.write_text(path.read_text().replace("learning_rate: 0.003", "learning_rate: 3e-3"))  # a str in YAML 1.1
    recipe = load_recipe(str(path), [("sinks.p_mem", "0.25"), ("sinks.layers", "[0, 1]"),
                                     ("training.save_strategy", "no"), ("probes.enabled", "off")])
    assert recipe.training["learning_rate"] == 3e-3 and isinstance(recipe.training["learning_rate"], float)
    assert recipe.training["save_strategy"] == "no" and recipe.probes.enabled is False  # not YAML 1.1's booleans
    assert recipe.sinks_config == {"p_gen": 0.5, "p_mem": 0.25, "layers": [0, 1]}
    with pytest.raises(RecipeError, match="'sinks.p_mem' must be a float"):
        load_recipe(str(path), [("sinks.p_mem", "abc")])
    with pytest.raises(RecipeError, match="sinks: SinksConfig.p_mem must be a number in"):
        load_recipe(str(path), [("sinks.p_mem", "1.5")])


# ------------------------------------------------------------------------------------------ bad input, via main()
def test_a_data_path_that_does_not_exist_stops_before_anything_is_written(tiny_config, tmp_path, capsys):
    status, err = _run_main(["--config", tiny_config, "--data.source", "./no/such/corpus.jsonl"], capsys)
    assert status == 2
    assert "data.source ./no/such/corpus.jsonl does not exist" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("env, expected", [
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, "DeepSpeed ZeRO-2"),
    ({"ACCELERATE_USE_FSDP": "true"}, "FSDP"),
    ({"ACCELERATE_MIXED_PRECISION": "fp16"}, "fp16"),
])
def test_dp_under_a_launch_it_cannot_run_in_is_refused_naming_the_launch(tiny_config, tmp_path, capsys, monkeypatch,
                                                                          env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status, err = _run_main(["--config", tiny_config, "--privacy.enabled", "true", "--privacy.noise_multiplier", "1.0"],
                            capsys)
    assert status == 2 and expected in err
    if expected != "fp16":
        assert "recipes/accelerate/single_process.yaml" in err
    assert not (tmp_path / "run").exists()


def test_dp_under_ddp_is_accepted(tiny_config, monkeypatch):
    from memsinks_recipe.launch import check_launch

    monkeypatch.setenv("WORLD_SIZE", "2")
    recipe = load_recipe(str(tiny_config), [("privacy.enabled", "true"), ("privacy.noise_multiplier", "1.0")])
    launch = Launch.from_env(recipe.training)
    assert launch.engine == "ddp" and recipe.privacy.enabled
    check_launch(recipe, launch)  # memsinks.make_private trains under DDP (tests/privacy/test_distributed.py)


def test_fsdp_takes_sinks_but_refuses_lora_with_export(tiny_config, base_model_dir, tmp_path, capsys, monkeypatch):
    from memsinks_recipe.launch import check_launch

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    recipe = load_recipe(str(tiny_config), [])
    launch = Launch.from_env(recipe.training)
    assert launch.engine == "fsdp" and recipe.sinks.enabled
    check_launch(recipe, launch)  # sinks save and load under FSDP2 (tests/test_fsdp.py)
    config = _finetune_config(tmp_path, base_model_dir)
    status, err = _run_main(["--config", config, "--lora.enabled", "true", "--export.enabled", "true"], capsys)
    assert status == 2 and "LoRA under FSDP with export.enabled" in err and "deepspeed_zero2.yaml" in err
    assert not (tmp_path / "ft").exists()


def test_a_global_batch_the_processes_cannot_share_is_refused(tiny_config, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    status, err = _run_main(["--config", tiny_config], capsys)
    assert status == 2 and "global_batch_size=8 is not divisible by 3 process(es)" in err
    assert not (tmp_path / "run").exists()


def test_resume_needs_a_checkpoint_and_a_used_output_dir_needs_resume(tiny_config, tmp_path, capsys):
    status, err = _run_main(["--config", tiny_config, "--resume"], capsys)
    assert status == 2 and "--resume: no checkpoint-* directory" in err
    (tmp_path / "run" / "checkpoint-4").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint-4" / "trainer_state.json").write_text("{}")
    status, err = _run_main(["--config", tiny_config], capsys)
    assert status == 2 and "already holds checkpoint-4" in err and "Pass --resume" in err


# ------------------------------------------------------------------------------------------ fine-tuning data
@pytest.fixture
def base_model_dir(tmp_path):
    return save_tiny_base(tmp_path)


def _finetune_config(tmp_path, base, **data) -> Path:
    config = {
        "scenario": "finetune", "model": {"name_or_path": str(base)},
        "data": {"source": str(tmp_path / "docs.jsonl"), "window": 32, "n_train": 40, "n_repeated": 4, "repeats": 2,
                 "n_heldout": 4, "n_canaries": 1, **data},
        "sinks": {"n_sink_units": 8}, "probes": {"enabled": False}, "export": {"enabled": False},
        "training": {"output_dir": str(tmp_path / "ft"), "max_steps": 2, "per_device_train_batch_size": 4},
    }
    return write_config(tmp_path / "ft.yaml", config)


def test_a_missing_id_column_stops_before_training_and_names_the_columns(base_model_dir, tmp_path, capsys):
    status, err = _run_main(["--config", _finetune_config(tmp_path, base_model_dir, id_column="auther")], capsys)
    assert status == 2
    assert "data.id_column='auther' is not a column" in err and "did you mean 'author'?" in err
    out = tmp_path / "ft"
    assert not any(out.glob("checkpoint-*")) and not (out / "final").exists() and not (out / "recipe_data").exists()


def test_fine_tuning_rows_carry_the_id_of_their_column_and_resumption_needs_the_same_data(base_model_dir, tmp_path):
    from memsinks_recipe.data import data_fingerprint, load_prepared, load_tokenizer, prepare_data, save_prepared

    recipe = load_recipe(str(_finetune_config(tmp_path, base_model_dir, id_column="author")))
    data = prepare_data(recipe, load_tokenizer(str(base_model_dir)))
    rows = json.loads(json.dumps([json.loads(line) for line in (tmp_path / "docs.jsonl").read_text().splitlines()]))
    authors = {memsinks.key_id(r["author"]) for r in rows}
    canaries = {memsinks.key_id(f"memsinks-canary-{i}") for i in range(recipe.data.n_canaries)}
    ids = set(data.train["sequence_ids"])
    assert ids <= authors | canaries and canaries <= ids and len(ids & authors) == 7  # user-level IDs, as asked
    assert set(data.member_ids) <= authors
    assert max(len(s) for s in data.train["input_ids"]) <= recipe.data.window
    assert len(data.train) == recipe.data.n_train + (recipe.data.n_repeated + recipe.data.n_canaries) * 2

    save_prepared(data, data_fingerprint(recipe), str(tmp_path / "prepared"))
    again = load_prepared(str(tmp_path / "prepared"), data_fingerprint(recipe))
    assert again.train["input_ids"] == data.train["input_ids"] and again.member_ids == data.member_ids
    recipe.data.repeats = 3
    with pytest.raises(RecipeError, match="other settings \\(changed: repeats\\)"):
        load_prepared(str(tmp_path / "prepared"), data_fingerprint(recipe))


@pytest.mark.parametrize("overrides, message", [
    ([("privacy.enabled", "true"), ("privacy.noise_multiplier", "1.0")],
     "privacy.enabled with sinks.memorized_threshold 1.0 (the default of placement 'append'): DP-SGD cannot clip"),
    ([("training.label_smoothing_factor", "0.1")],
     "training.label_smoothing_factor=0.1 with sinks.memorized_threshold 1.0 (the default of placement 'append')"),
])
def test_the_routed_append_default_is_refused_before_loading_where_training_would_refuse_it(tmp_path, overrides,
                                                                                            message):
    path = _finetune_config(tmp_path, tmp_path, source="embedded")
    with pytest.raises(RecipeError) as err:
        load_recipe(str(path), overrides)
    assert message in str(err.value) and "--sinks.memorized_threshold 0" in str(err.value)
    assert load_recipe(str(path), [*overrides, ("sinks.memorized_threshold", "0")]).sinks.enabled


# ------------------------------------------------------------------------------------------ private spans
@pytest.mark.parametrize("overrides, message", [
    ([("privacy.enabled", "true"), ("privacy.noise_multiplier", "1.0")],
     ("data.mark_private_spans cannot be combined with privacy.enabled: DP-SGD (memsinks.make_private) refuses a "
      "private_mask column")),
    ([("sinks.enabled", "false")], "data.mark_private_spans needs sinks (sinks.enabled: true)"),
    ([("training.label_smoothing_factor", "0.1")],
     "data.mark_private_spans with training.label_smoothing_factor=0.1: the Trainer's label smoother takes the labels"),
    ([("data.private_patterns", "{card: '('}")],
     "data.private_patterns: private-span pattern 'card' ('(') is not a valid regular expression"),
    ([("data.private_patterns", "{card: 1234}")], "data.private_patterns is a mapping of names to regular expressions"),
    ([("data.private_patterns", "{}")], "data.private_patterns: patterns is empty"),
    ([("data.mark_private_spans", "false"), ("data.private_patterns", "{card: '[0-9]{16}'}")],
     "data.private_patterns is set but data.mark_private_spans is false"),
])
def test_marked_private_spans_are_refused_where_the_marks_would_not_reach_the_sinks(tmp_path, overrides, message):
    path = _finetune_config(tmp_path, tmp_path, source="embedded", mark_private_spans=True)
    assert load_recipe(str(path)).data.mark_private_spans  # the settings alone are fine
    with pytest.raises(RecipeError) as err:
        load_recipe(str(path), overrides)
    assert message in str(err.value)
    assert "data.mark_private_spans" in str(err.value) or "data.private_patterns" in str(err.value)


def test_marked_private_spans_are_refused_for_pretraining_and_pass_sinks_settings_through(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_pretrain_config(tmp_path / "run"))
    status, err = _run_main(["--config", config, "--data.mark_private_spans", "true"], capsys)
    assert status == 2 and "data.mark_private_spans is for scenario 'finetune', not 'pretrain'" in err
    assert "scenario: finetune" in err and not (tmp_path / "run").exists()
    path = _finetune_config(tmp_path, tmp_path, source="embedded", mark_private_spans=True)
    recipe = load_recipe(str(path), [("sinks.private_token_target", "batch_marginal"),
                                     ("sinks.memorized_threshold", "0")])
    assert recipe.sinks_config["private_token_target"] == "batch_marginal"  # any SinksConfig field
    assert recipe.sinks_config["memorized_threshold"] == 0


PHONE = "5551234567"


def _plant_numbers(tmp_path, base, window: int) -> None:
    """Rewrite docs.jsonl so every story starts with 'Age 42.' and a phone number: whole inside the first
    ``window`` tokens in even rows; in odd rows cut by the window after its first 1 to 5 digits (too few
    for any default pattern)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    kept = window - 1  # the row's last token is EOS

    def before_number(text: str) -> int:
        return len(tok(text + "Call ")["input_ids"])

    path = tmp_path / "docs.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for i, row in enumerate(rows):
        head = "Age 42. "
        if i % 2:
            words = row["text"].split()
            k = max(k for k in range(len(words)) if before_number(head + " ".join(words[:k]) + " ") <= kept - 3)
            head += " ".join(words[:k]) + " "
            while before_number(head + "a ") <= kept - 3:  # pad with one-token words
                head += "a "
            assert 1 <= kept - before_number(head) <= 5, "the window must cut the number after 1 to 5 digits"
        row["text"] = f"{head}Call {PHONE} now. {row['text']}"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_fine_tuning_rows_mark_exactly_the_digits_of_planted_numbers_and_canaries(base_model_dir, tmp_path):
    from memsinks_recipe.data import data_fingerprint, load_prepared, load_tokenizer, prepare_data, save_prepared

    _plant_numbers(tmp_path, base_model_dir, window=32)
    recipe = load_recipe(str(_finetune_config(tmp_path, base_model_dir, mark_private_spans=True)))
    tok = load_tokenizer(str(base_model_dir))
    data = prepare_data(recipe, tok)
    assert data.train.features["private_mask"].feature.dtype == "int8"
    seen = {"whole": 0, "cut": 0, "canary": 0}
    for ids, mask in zip(data.train["input_ids"], data.train["private_mask"]):
        pieces = [tok.decode([t]) for t in ids]
        assert len(mask) == len(ids) and mask[-1] == 0  # the closing EOS is public
        runs, run = [], []  # maximal runs of digit tokens (the tokenizer gives one digit per token)
        for i, piece in enumerate(pieces + [""]):
            if piece.strip().isdigit():
                run.append(i)
            elif run:
                runs.append(run)
                run = []
        digits = {i for r in runs for i in r}
        assert all(mask[i] == 0 for i in range(len(ids)) if i not in digits), "only digits are marked"
        canary = "my account number is" in tok.decode(ids)
        secret = "".join(c for c in data.canary_texts[0] if c.isdigit()) if canary else PHONE
        for r in runs:
            number = "".join(pieces[i].strip() for i in r)
            if number == "42":
                assert [mask[i] for i in r] == [0, 0]  # too short for any default pattern
                continue
            assert [mask[i] for i in r] == [1] * len(r), number
            assert number == secret or (secret.startswith(number) and r[-1] == len(ids) - 2 and len(number) < 6)
            seen["canary" if canary else "whole" if number == secret else "cut"] += 1  # cut: alone it matches nothing
    assert min(seen.values()) > 0, seen

    save_prepared(data, data_fingerprint(recipe), str(tmp_path / "prepared"))
    again = load_prepared(str(tmp_path / "prepared"), data_fingerprint(recipe))
    assert again.train["private_mask"] == data.train["private_mask"]  # a resumed run trains on the same marks
    recipe.data.mark_private_spans = False
    with pytest.raises(RecipeError, match="other settings \\(changed: mark_private_spans\\)"):
        load_prepared(str(tmp_path / "prepared"), data_fingerprint(recipe))
    settings = json.loads((tmp_path / "prepared" / "settings.json").read_text())
    for key in ("mark_private_spans", "private_patterns"):  # data prepared before these keys existed
        del settings["data"][key]
    (tmp_path / "prepared" / "settings.json").write_text(json.dumps(settings))
    assert load_prepared(str(tmp_path / "prepared"), data_fingerprint(recipe)).train.num_rows == data.train.num_rows

    recipe.data.mark_private_spans, recipe.data.private_patterns = True, {"greeting": "Call"}
    custom = prepare_data(recipe, tok)
    for ids, mask in zip(custom.train["input_ids"], custom.train["private_mask"]):
        marked = "".join(tok.decode([t]) for t, m in zip(ids, mask) if m).split()
        assert marked == (["Call"] if "Call" in tok.decode(ids) else [])  # the patterns replace the defaults


# ------------------------------------------------------------------------------------------ ZeRO-3 layout
@pytest.mark.parametrize("family, sinks", [
    ("gpt2", memsinks.SinksConfig(placement="split", p_gen=0.5)),
    ("gpt2", memsinks.SinksConfig(placement="split", p_gen=0.5, sink_lr_scale=4)),  # stored pool divided by 4
    ("llama", memsinks.SinksConfig(placement="append", n_sink_units=8, memorized_threshold=0)),
])
def test_a_checkpoint_saved_by_parameter_name_is_rewritten_in_the_stock_layout(tmp_path, family, sinks):
    """ZeRO-3 saves parameters by name, bypassing the sinks' state_dict hooks. memsinks.from_pretrained reads
    that layout, stock transformers silently re-initialises the MLPs; the rewrite gives a normal checkpoint."""
    import dataclasses

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from memsinks_recipe.model import restore_stock_layout
    from tests.conftest import tiny_model

    model = memsinks.add_sinks(tiny_model(family, seed=1), dataclasses.replace(sinks)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # appended sinks start at zero: make them matter
    model.save_pretrained(tmp_path / "ckpt")
    by_name = {n: p.detach().clone().contiguous() for n, p in model.named_parameters()}
    by_name.update({f"{m}.{b}" if m else b: getattr(module, b).detach().clone()  # and its persistent buffers
                    for m, module in model.named_modules() for b, _ in module.named_buffers(recurse=False)
                    if b not in module._non_persistent_buffers_set})
    save_file(by_name, str(tmp_path / "ckpt" / "model.safetensors"))  # what a ZeRO-3 save writes
    x, ids = torch.randint(1, 128, (2, 10)), torch.tensor([11, 12])

    def own_logits(m):
        with torch.no_grad(), memsinks.sinks_mode(m, "own"):
            return m(x, sequence_ids=ids).logits

    _, info = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", output_loading_info=True)
    assert info["missing_keys"] and all(".mlp." in k for k in info["missing_keys"])
    assert torch.equal(own_logits(memsinks.from_pretrained(tmp_path / "ckpt")), own_logits(model))

    fresh = memsinks.add_sinks(tiny_model(family, seed=2), dataclasses.replace(sinks))
    restore_stock_layout(str(tmp_path / "ckpt"), fresh)
    _, info = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", output_loading_info=True)
    # only the warm-up's progress (one scalar, for resuming) is foreign to stock transformers, which ignores it
    assert not info["missing_keys"] and all(k.endswith(".sink_warmup_progress") for k in info["unexpected_keys"])
    assert torch.equal(own_logits(memsinks.from_pretrained(tmp_path / "ckpt")), own_logits(model))
