"""How many rows of each x16 record fall in the sinks' 8-step warm-up (the first 64 training rows), per seed.

Run from the repository root: python benchmarks/results/finetune_isolation/raw/masked_goldfish/warmup_rows.py
It builds each seed's training rows exactly as benchmarks/finetune_isolation.py does (SmolLM2's tokenizer,
the default settings, the first 400,000 characters of ../shared/data/tinyshakespeare.txt) and trains nothing.
"""

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 5))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from finetune_lib import base, data, settings  # noqa: E402
from memsinks._causal_lm import load_tokenizer  # noqa: E402

tokenizer = load_tokenizer(base.smollm2_directory())
config = settings.FinetuneSettings()
with open(os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt"), encoding="utf-8") as f:
    text = f.read()[:400_000]
warmup_rows = 8 * config.batch_size
for seed in (0, 1, 2):
    d = data.build(tokenizer, config, text, seed)
    rows = [d.record_id(r) for r in d.training_rows()]
    per_record = [rows[:warmup_rows].count(d.record_id(r)) for r in d.groups[16]]
    print(f"seed {seed}: x16 records' rows among the first {warmup_rows}: {per_record} "
          f"(total {sum(per_record)}; records absent: {per_record.count(0)})")
