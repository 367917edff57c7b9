"""The fine-tuning recipe end to end in one process: a pretrained model from a local directory, append sinks
attached after LoRA, user-level DP-SGD over an ID column, probes, the export and its report; and marked
private spans reaching the model's training forward."""

from __future__ import annotations

import json
import math

import pytest
import torch
from datasets import load_from_disk
from safetensors.torch import load_file
from transformers import AutoTokenizer

import memsinks
from tests.recipes.helpers import save_tiny_base, summary, train_module, write_config

pytestmark = pytest.mark.slow


def test_lora_dp_finetune_trains_only_adapters_and_sinks_and_ships_the_base_architecture(tmp_path, capsys):
    base = save_tiny_base(tmp_path)
    out = tmp_path / "ft"
    config = write_config(tmp_path / "ft.yaml", {
        "scenario": "finetune", "model": {"name_or_path": str(base)},
        "data": {"source": str(tmp_path / "docs.jsonl"), "id_column": "author", "window": 32, "n_train": 40,
                 "n_repeated": 4, "repeats": 2, "n_heldout": 4, "n_canaries": 1},
        # 3 steps: a warm-up would hold the adapters still; DP-SGD cannot clip the routed step
        "sinks": {"n_sink_units": 8, "sink_warmup_steps": 0, "memorized_threshold": 0},
        "lora": {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "privacy": {"enabled": True, "noise_multiplier": 1.0, "privacy_unit": "sequence_id",
                    "physical_batch_size": 16},
        "probes": {"every_n_steps": None, "canaries": False, "prefix_len": 8, "suffix_len": 8, "max_examples": 4},
        "export": {"enabled": True, "canary_samples": 20},
        "training": {"output_dir": str(out), "max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 5e-2,
                     "logging_steps": 1, "save_strategy": "no", "seed": 0},
    })
    assert train_module().main(["--config", str(config)]) == 0
    printed = capsys.readouterr().out

    s = summary(out)
    assert s["world_size"] == 1 and s["steps"] == 3
    assert s["epsilon"] is not None and 0 < s["epsilon"] < math.inf
    assert (out / "privacy_ledger.json").is_file() and (out / "privacy_config.json").is_file()
    assert "memorization/mia_auc_loss" in printed
    assert "Sinks removed: before (with sinks) and after (shipped)" in printed

    before = load_file(str(base / "model.safetensors"))
    final = memsinks.from_pretrained(out / "final")  # LoRA merged, sinks kept
    cfg = memsinks.get_sinks_config(final)
    assert (cfg.placement, cfg.n_sink_units, cfg.base_intermediate_size) == ("append", 8, 64)
    mlp = final.model.layers[0].mlp
    assert torch.equal(mlp.down_proj.base.weight, before["model.layers.0.mlp.down_proj.weight"])  # frozen under LoRA
    assert mlp.down_proj.sink_weight.abs().sum() > 0  # the appended sinks trained (they start at zero)
    attention = final.model.layers[0].self_attn
    assert not torch.equal(attention.q_proj.weight, before["model.layers.0.self_attn.q_proj.weight"])  # LoRA merged
    assert torch.equal(attention.k_proj.weight, before["model.layers.0.self_attn.k_proj.weight"])  # not adapted

    shipped = load_file(str(out / "shipped" / "model.safetensors"))
    shipped_config = json.loads((out / "shipped" / "config.json").read_text())
    assert shipped_config["intermediate_size"] == 64  # the base architecture back
    for key in ("model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        assert torch.equal(shipped[key], before[key])  # dropping the sinks gives back the frozen base MLP exactly

    report = json.loads((out / "ablation_report.json").read_text())
    perplexity = next(r["values"] for r in report["rows"] if r["metric"] == "held-out perplexity")
    assert perplexity["shipped model"] == pytest.approx(perplexity["sinks dropped"], rel=1e-4)


def test_marked_private_spans_reach_the_training_forward_with_the_chosen_target(tmp_path, monkeypatch):
    """data.mark_private_spans end to end: the prepared rows carry a private_mask, the collator and the
    Trainer pass it on (a column the model's forward did not take would be dropped silently), and every
    training forward gets it with exactly the digit tokens marked, so the marked digits train only the sinks."""
    import memsinks.forward as forward_module

    base = save_tiny_base(tmp_path)
    docs = tmp_path / "docs.jsonl"
    rows = [json.loads(line) for line in docs.read_text().splitlines()]
    docs.write_text("".join(json.dumps({**r, "text": f"Call 5551234567 now. {r['text']}"}) + "\n" for r in rows))
    calls = []
    marked_forward = forward_module.forward_with_private_tokens

    def recording(run_forward, kwargs, private_mask, *args, **kw):
        calls.append((kwargs["input_ids"].cpu(), private_mask.cpu(), kw["marginal_target"]))
        return marked_forward(run_forward, kwargs, private_mask, *args, **kw)

    monkeypatch.setattr(forward_module, "forward_with_private_tokens", recording)
    out = tmp_path / "private"
    config = write_config(tmp_path / "private.yaml", {
        "scenario": "finetune", "model": {"name_or_path": str(base)},
        "data": {"source": str(docs), "window": 32, "n_train": 16, "n_repeated": 2, "repeats": 2, "n_heldout": 2,
                 "n_canaries": 1, "mark_private_spans": True},
        "sinks": {"n_sink_units": 8, "private_token_target": "batch_marginal", "memorized_threshold": 0},
        "probes": {"enabled": False}, "export": {"enabled": False},
        "training": {"output_dir": str(out), "max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 5e-2,
                     "logging_steps": 1, "save_strategy": "no", "seed": 0},
    })
    assert train_module().main(["--config", str(config)]) == 0

    s = summary(out)
    assert s["steps"] == 2 and all(math.isfinite(loss) for _, loss in s["loss_curve"])
    tok = AutoTokenizer.from_pretrained(base)
    digit = {i for i in range(len(tok)) if tok.decode([i]).strip().isdigit()}
    assert len(calls) == 2  # one forward per step, each with its batch's marks
    for input_ids, private_mask, marginal_target in calls:
        assert marginal_target  # sinks.private_token_target reached the model
        assert private_mask.shape == input_ids.shape and private_mask.sum() >= 10  # the phone number, at least
        is_digit = torch.tensor([[t in digit for t in row] for row in input_ids.tolist()])
        assert torch.equal(private_mask, is_digit)  # the phone's and the canary's digits, nothing else
    assert "private_mask" in load_from_disk(str(out / "recipe_data" / "train")).column_names  # what --resume reads
    final = memsinks.from_pretrained(out / "final")
    assert memsinks.get_sinks_config(final).private_token_target == "batch_marginal"
    assert final.model.layers[0].mlp.down_proj.sink_weight.abs().sum() > 0  # the sinks learned the marked digits
