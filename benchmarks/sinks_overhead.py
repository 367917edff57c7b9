"""Training-step cost of sinks, measured against the same model without them, in one run.

For each family (tiny GPT-2, tiny Llama) and placement:
- split:  the model with split sinks vs the same model without sinks;
- append: the model with ``n`` appended sink units vs a stock model whose MLP is already
  ``n`` units wider (the wider MLP's own cost is not the routing's).
Steps (forward, backward, AdamW step) of the two arms alternate on the same batch, so load
on the machine hits both alike; the median step times give the ratio. The first steps are not
timed: three to settle, then the sinks' warm-up (``SinksConfig.sink_warmup_steps``), whose
gradient hooks a run pays for only in its first steps. Memory is the bytes
autograd saves for backward (activation memory; on a GPU also the peak allocated).

    python benchmarks/sinks_overhead.py [--steps 30] [--batch 16] [--seq 128]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch

import memsinks
from memsinks._small_decoder import DecoderShape, build_decoder


def build(family: str, inner: int, args):
    shape = DecoderShape(family=family, n_layer=args.layers, n_embd=args.hidden, n_head=4, intermediate=inner,
                         max_positions=args.seq)
    return build_decoder(shape, args.vocab, seed=0)


def saved_bytes(model, batch) -> int:
    """Bytes autograd keeps for the backward of one forward (activation memory)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch).loss
    return total


def compare(reference, candidate, batch, steps: int, device) -> dict:
    arms = {"reference": reference.to(device).train(), "sinks": candidate.to(device).train()}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in arms.items()}
    inputs = {"reference": {k: v for k, v in batch.items() if k != "sequence_ids"}, "sinks": batch}
    times = {k: [] for k in arms}
    untimed = 3 + memsinks.get_sinks_config(candidate).sink_warmup_steps
    for step in range(steps + untimed):
        for name in (("reference", "sinks") if step % 2 == 0 else ("sinks", "reference")):
            model, opt = arms[name], opts[name]
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(**inputs[name]).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= untimed:
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"reference_ms": 1000 * med["reference"], "sinks_ms": 1000 * med["sinks"],
           "time_ratio": med["sinks"] / med["reference"]}
    mem = {k: saved_bytes(arms[k], inputs[k]) for k in arms}
    out["activation_mib_reference"] = mem["reference"] / 2**20
    out["activation_mib_sinks"] = mem["sinks"] / 2**20
    out["activation_ratio"] = mem["sinks"] / mem["reference"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--inner", type=int, default=1024)
    p.add_argument("--sink-units", type=int, default=256)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
    ids = torch.randint(1, 2**62, (args.batch,), generator=g)
    batch = {"input_ids": x.to(device), "labels": x.to(device), "sequence_ids": ids.to(device)}
    rows = []
    for family in ("gpt2", "llama"):
        plain = build(family, args.inner, args)
        split = memsinks.add_sinks(copy.deepcopy(plain), memsinks.SinksConfig(placement="split"))
        rows.append({"family": family, "placement": "split", **compare(plain, split, batch, args.steps, device)})
        wide = build(family, args.inner + args.sink_units, args)
        # the appended MLP's own cost: one pass per step, without routing memorized tokens (the append default,
        # a second pass, whose step time benchmarks/finetune_isolation.py measures on a real model)
        append = memsinks.add_sinks(copy.deepcopy(plain), memsinks.SinksConfig(
            placement="append", n_sink_units=args.sink_units, memorized_threshold=0))
        rows.append({"family": family, "placement": "append", **compare(wide, append, batch, args.steps, device)})
    print(f"machine: {platform.machine()} {platform.processor() or ''} torch {torch.__version__} "
          f"threads={args.threads} device={device}; batch {args.batch}x{args.seq}, {args.layers} layers, "
          f"hidden {args.hidden}, MLP {args.inner} (+{args.sink_units} appended)")
    print("family | placement | reference ms | sinks ms | step-time ratio | activation MiB ref / sinks")
    for r in rows:
        ref = "plain" if r["placement"] == "split" else "wider plain"
        print(f"{r['family']:<6} | {r['placement']:<9} | {r['reference_ms']:8.1f} ({ref}) | {r['sinks_ms']:8.1f} | "
              f"{r['time_ratio']:.3f}x | {r['activation_mib_reference']:.1f} / {r['activation_mib_sinks']:.1f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
