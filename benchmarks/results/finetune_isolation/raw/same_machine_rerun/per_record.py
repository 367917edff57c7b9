"""Each x16 record's secret loss with the defaults' sinks dropped, beside the rows of it the sinks' 8-step warm-up saw.

Run from the repository root: python benchmarks/results/finetune_isolation/raw/same_machine_rerun/per_record.py
It reads this folder's results.json (the benchmark's per-record figures, in the order of the x16 group) and
../masked_goldfish/warmup_rows.txt (the warm-up's rows per record, in the same order), and prints one line per seed
and arm: if the warm-up's data order decided what the shared units memorize, the records it saw least would have
the lowest loss (the most memorized).
"""

import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "results.json"), encoding="utf-8") as f:
    per_seed = json.load(f)["per_seed"]
warmup = {}
with open(os.path.join(HERE, "..", "masked_goldfish", "warmup_rows.txt"), encoding="utf-8") as f:
    for line in f:
        seed, counts = re.match(r"seed (\d+): .*?\[([\d, ]+)\]", line).groups()
        warmup[seed] = [int(c) for c in counts.split(",")]

for seed, rows in sorted(per_seed.items()):
    for name, row in rows.items():
        group = row.get("groups", {}).get("16", {})
        losses = group.get("secret_loss_per_record")
        if not losses or name != "sinks/drop":  # the defaults: the 8-step warm-up the counts are of
            continue
        rank = sorted(range(len(losses)), key=losses.__getitem__)
        print(f"seed {seed} {name}: warm-up rows {warmup[seed]}; secret loss "
              f"[{', '.join(f'{x:.2f}' for x in losses)}] (held-out secrets {row['heldout_secret_loss']:.2f}); "
              f"most memorized: record {rank[0]} ({warmup[seed][rank[0]]} warm-up rows), "
              f"least: record {rank[-1]} ({warmup[seed][rank[-1]]} warm-up rows)")
