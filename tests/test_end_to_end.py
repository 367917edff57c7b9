"""End to end on real English text: sinks hold the repeated windows' memorization, not the language."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import memsinks
from memsinks.corpus import split_text_windows, train_tokenizer
from memsinks.probes import sequence_losses

pytestmark = pytest.mark.slow


def test_dropping_sinks_forgets_repeated_windows_but_not_the_language(shakespeare_path, tmp_path):
    text = shakespeare_path.read_text()[:150_000]
    tok = train_tokenizer([text[i:i + 2000] for i in range(0, len(text), 2000)], vocab_size=512)
    split = split_text_windows(text, tok, window=64, n_repeated=16, n_heldout=64, seed=0)
    ds = memsinks.assign_sequence_ids(Dataset.from_dict({"input_ids": split.training_rows(repeats=32)}))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=128, n_head=4, n_positions=64, vocab_size=len(tok),
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    memsinks.add_sinks(model, memsinks.SinksConfig(p_gen=0.5, p_mem=0.3))
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=32,
                             learning_rate=3e-3, lr_scheduler_type="cosine", warmup_steps=10, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    Trainer(model=model, args=args, train_dataset=ds, data_collator=memsinks.SinksDataCollator()).train()

    losses = {}
    for name, seqs in (("repeated", split.repeated), ("heldout", split.heldout)):
        ids = [memsinks.content_id(s) for s in seqs]
        for mode in ("own", "drop"):
            with memsinks.sinks_mode(model, mode):
                losses[name, mode] = float(np.mean(sequence_losses(model, seqs, ids)))
    # the repeated windows are memorized with their sinks on ...
    assert losses["repeated", "own"] < losses["heldout", "own"] - 1.0
    # ... and dropping the sinks takes a large part of that away ...
    closed = (losses["repeated", "drop"] - losses["repeated", "own"]) / (losses["heldout", "own"] - losses["repeated", "own"])
    assert closed > 0.4, losses
    # ... while the held-out loss barely moves
    assert abs(losses["heldout", "drop"] - losses["heldout", "own"]) < 0.02 * losses["heldout", "own"], losses
