"""How many rows of each x16 record the sinks' 8-step warm-up sees, per seed: the first 8 batches the stock
Trainer draws, built exactly as ``benchmarks/finetune_isolation.py`` builds them.

Run from the repository root: python benchmarks/results/finetune_isolation/raw/masked_goldfish/warmup_rows.py
It builds each seed's training rows (SmolLM2's tokenizer, the default settings, the first 400,000 characters of
../shared/data/tinyshakespeare.txt) and the Trainer the benchmark trains with (the same arguments and collator;
its sampler is seeded by the run's seed and epoch, not by the model), on a tiny stand-in model, and reads the
sequence IDs of its first 8 batches. It trains nothing.
"""

import os
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 5))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import memsinks  # noqa: E402
from finetune_lib import arms, base, data, settings, train  # noqa: E402
from memsinks._causal_lm import load_tokenizer  # noqa: E402
from memsinks._small_decoder import DecoderShape, build_decoder  # noqa: E402
from memsinks._trainer_setup import experiment_arguments, sinks_trainer  # noqa: E402

tokenizer = load_tokenizer(base.smollm2_directory())
config = settings.FinetuneSettings()
with open(os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt"), encoding="utf-8") as f:
    text = f.read()[:400_000]
warmup_steps = 8
for seed in (0, 1, 2):
    d = data.build(tokenizer, config, text, seed)
    ds = train.training_dataset(d, tokenizer, arms.ARMS["sinks"])
    shape = DecoderShape(family="llama", n_layer=1, n_embd=16, n_head=2, intermediate=32, n_kv_heads=1, dropout=0.0)
    model = memsinks.add_sinks(build_decoder(shape, len(tokenizer), seed=0, token_id=0),
                               memsinks.SinksConfig(placement="append", n_sink_units=8))
    with tempfile.TemporaryDirectory() as out:
        args = experiment_arguments(out, batch_size=config.batch_size, learning_rate=config.learning_rate, seed=seed,
                                    epochs=config.epochs, warmup_steps=0, lr_scheduler_type="linear")
        loader = sinks_trainer(model, args, ds, tokenizer).get_train_dataloader()
        seen = []
        for step, batch in enumerate(loader):
            if step == warmup_steps:
                break
            seen += batch[memsinks.data.SEQUENCE_IDS].view(-1).tolist()
    per_record = [seen.count(d.record_id(r)) for r in d.groups[16]]
    print(f"seed {seed}: x16 records' rows among the warm-up's {len(seen)}: {per_record} "
          f"(total {sum(per_record)}; records absent: {per_record.count(0)})")
