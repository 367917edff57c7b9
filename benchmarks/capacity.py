"""Capacity: how many bits a model memorizes per parameter, and how much of it sits in the sinks.

Morris et al. 2025 ("How much do language models memorize?") train GPT-style models on
uniformly random token sequences, where nothing generalises, so every bit the model gains over
the uniform distribution is memorization. As the dataset grows the memorized total plateaus at
the model's capacity, about 3.6 bits per parameter (3.51 in bf16, 3.83 in fp32, their figures).

This script:
1. trains tiny GPT-2-shaped models (``--sizes``) in fp32 on random sequences of growing
   dataset size (``--multiples``: 0.5, 1 and 2 times the paper's fp32 capacity of the model, in
   bits of entropy) until the memorized bits stop growing (AdamW, learning rate cut on plateaus),
   measures them with ``memsinks.probes.memorized_bits`` (gain over uniform, each sequence
   capped at its entropy), takes each model's plateau (the maximum over
   dataset sizes) and fits bits per parameter (least squares through the origin);
2. repeats it with split sinks for several sink fractions (``1 - p_gen``): bits with sinks
   ``own`` minus bits with sinks ``drop`` is the capacity that sits in the sinks.

Writes ``results.json`` (``bits_per_param``: the fitted fp32 plateau), ``results.md`` and
``capacity.png`` into ``--out``.

    python benchmarks/capacity.py [--quick] [--out benchmarks/results/capacity] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import numpy as np
import torch

import memsinks
from memsinks._small_decoder import DecoderShape, build_decoder
from memsinks.data import content_id
from memsinks.probes import memorized_bits

PAPER_FP32 = 3.83  # Morris et al. 2025, bits per parameter in fp32
TOLERANCE = 0.15

# three dataset sizes: a 4x point costs as much as the other three together and added 1% (16x1) and 6% (24x1)
# to the plateau (results/capacity/README.md)
FULL = dict(sizes=[(16, 1), (24, 1), (32, 1), (32, 2)], multiples=[0.5, 1.0, 2.0],
            sink_size=(16, 1), sink_fractions=[0.1, 0.3, 0.5], max_epochs=5000, budget_minutes=38.0)
QUICK = dict(sizes=[(16, 1)], multiples=[0.5, 2.0], sink_size=(16, 1), sink_fractions=[0.3], max_epochs=60,
             budget_minutes=1.0)


def build(vocab: int, seq_len: int, width: int, layers: int, seed: int):
    shape = DecoderShape(n_layer=layers, n_embd=width, n_head=2 if width % 2 == 0 else 1, intermediate=4 * width,
                         max_positions=seq_len)
    return build_decoder(shape, vocab, seed=seed, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def random_sequences(n: int, seq_len: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (n, seq_len), generator=torch.Generator().manual_seed(seed))


def uniform_bits(model, data: torch.Tensor, ids: torch.Tensor | None) -> float:
    """Memorized bits (gain over uniform, capped per sequence) from one no-grad pass, for the stopping rule."""
    vocab = model.config.vocab_size
    entropy = (data.shape[1] - 1) * math.log2(vocab)
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(data), 256):
            x = data[s:s + 256]
            kwargs = {} if ids is None else {"sequence_ids": ids[s:s + 256]}
            logits = model(input_ids=x, **kwargs).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none").sum(1)
            total += float(np.clip(entropy - nll.numpy() / math.log(2), 0, entropy).sum())
    return total


def train(model, data: torch.Tensor, ids: torch.Tensor | None, lr: float, batch_size: int, max_epochs: int,
          check_every: int, tol: float, seconds: float, patience: int = 2, lr_drops: int = 3,
          drop_factor: float = 0.3, anneal_at: float = 0.6) -> dict:
    """AdamW with the learning rate cut on plateaus, until memorized bits stop growing at the lowest rate.

    Every ``check_every`` epochs the memorized bits are measured; a check that does not beat the
    best so far by ``tol`` (relative) is stale. After ``patience`` stale checks the learning rate
    is multiplied by ``drop_factor``, up to ``lr_drops`` times; stale again after the last cut:
    ``plateau``. Annealing matters: at a constant rate the bits sit in the optimizer's noise
    (a 20k-parameter model gained another 8% once the rate was cut, see results/capacity/README.md),
    and comparing each check with the previous one stopped runs on the first noisy dip. So that a
    run cut short by its time share ``seconds`` still ends annealed, the cuts are forced at
    ``anneal_at`` of that time and evenly after it. Also stops after ``max_epochs``; ``stopped``
    says which rule ended it (``time`` or ``max_epochs``: the run may sit below capacity).
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(0)
    best, stale, drops, epoch, stopped = -1.0, 0, 0, 0, "max_epochs"

    def cut() -> None:
        nonlocal drops, stale
        for group in opt.param_groups:
            group["lr"] *= drop_factor
        drops, stale = drops + 1, 0

    start = time.perf_counter()
    for epoch in range(1, max_epochs + 1):
        model.train()
        for batch in torch.randperm(len(data), generator=gen).split(batch_size):
            kwargs = {} if ids is None else {"sequence_ids": ids[batch]}
            loss = model(input_ids=data[batch], labels=data[batch], **kwargs).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch % check_every == 0:
            model.eval()
            now = uniform_bits(model, data, ids)
            if now > best * (1 + tol):
                best, stale = now, 0
            else:
                stale += 1
            if stale >= patience:
                if drops == lr_drops:
                    stopped = "plateau"
                    break
                cut()
        elapsed = time.perf_counter() - start
        if elapsed > seconds:
            stopped = "time"
            break
        if drops < lr_drops and elapsed > seconds * (anneal_at + (1 - anneal_at) * drops / (lr_drops + 1)):
            cut()
    model.eval()
    return {"epochs": epoch, "stopped": stopped, "lr_drops": drops}


class Budget:
    """Training time shared among the runs in proportion to their cost (sequences x parameters).

    Each run gets the time left times its share of the cost left, so time that a run leaves
    unused (it reached its plateau early) goes to the runs after it.
    """

    def __init__(self, seconds: float, cost: float):
        self.left, self.cost = float(seconds), float(cost)

    def share(self, cost: float) -> float:
        return self.left * cost / self.cost if self.cost > 0 else 0.0

    def spend(self, cost: float, seconds: float) -> None:
        self.left, self.cost = max(0.0, self.left - seconds), max(0.0, self.cost - cost)


def measure(vocab, seq_len, width, layers, n_seq, args, seconds: float, sinks_p_gen=None) -> dict:
    """Train one model on ``n_seq`` random sequences; memorized bits (and, with sinks, own vs drop)."""
    model = build(vocab, seq_len, width, layers, args.seed)
    data = random_sequences(n_seq, seq_len, vocab, args.seed + n_seq)
    ids = None
    row = {"width": width, "layers": layers, "n_params": n_params(model), "n_sequences": n_seq,
           "dataset_bits": n_seq * (seq_len - 1) * math.log2(vocab)}
    if sinks_p_gen is not None:
        model = memsinks.add_sinks(model, memsinks.SinksConfig(placement="split", p_gen=sinks_p_gen,
                                                               p_mem=args.p_mem))
        ids = torch.tensor([content_id(s) for s in data.tolist()], dtype=torch.long)
        row["sink_fraction"] = round(1 - sinks_p_gen, 6)
    t = time.perf_counter()
    row.update(train(model, data, ids, args.lr, args.batch_size, args.max_epochs, args.check_every, args.tol,
                     seconds, patience=args.patience, lr_drops=args.lr_drops))
    row["train_s"] = round(time.perf_counter() - t, 1)
    seqs = data.tolist()
    if sinks_p_gen is None:
        row["bits"] = memorized_bits(model, seqs, batch_size=256).total_bits
    else:
        with memsinks.sinks_mode(model, "own"):
            row["bits_own"] = memorized_bits(model, seqs, sequence_ids=ids.tolist(), batch_size=256).total_bits
        with memsinks.sinks_mode(model, "drop"):
            row["bits_drop"] = memorized_bits(model, seqs, batch_size=256).total_bits
        row["bits_in_sinks"] = row["bits_own"] - row["bits_drop"]
        row["sink_share"] = row["bits_in_sinks"] / row["bits_own"] if row["bits_own"] > 0 else None
    return row


def fit_bits_per_param(plateaus: list[dict]) -> float:
    """Least-squares slope through the origin of plateau bits against parameter count."""
    x = np.array([p["n_params"] for p in plateaus], dtype=float)
    y = np.array([p["bits"] for p in plateaus], dtype=float)
    return float((x * y).sum() / (x * x).sum())


def dataset_sizes(n_params_: int, multiples, seq_len: int, vocab: int) -> list[int]:
    """Sequence counts whose total entropy is ``multiples`` x the paper's fp32 capacity of the model."""
    per_seq = (seq_len - 1) * math.log2(vocab)
    return sorted({max(4, int(round(m * PAPER_FP32 * n_params_ / per_seq))) for m in multiples})


def write_outputs(out: str, result: dict) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    lines = [
        "# Capacity: memorized bits per parameter (fp32)", "",
        f"Fitted plateau: **{result['bits_per_param']:.2f} bits/parameter** (Morris et al. 2025 fp32: {PAPER_FP32}; "
        f"within ±{int(TOLERANCE * 100)}%: {result['within_tolerance']}). Vocabulary {result['settings']['vocab']}, "
        f"sequence length {result['settings']['seq_len']}.", "",
        "| width x layers | parameters | sequences | dataset bits | memorized bits | bits/param | epochs "
        "| LR cuts | stopped by |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(f"| {r['width']}x{r['layers']} | {r['n_params']} | {r['n_sequences']} | {r['dataset_bits']:.0f} | "
                     f"{r['bits']:.0f} | {r['bits'] / r['n_params']:.2f} | {r['epochs']} | {r['lr_drops']} | "
                     f"{r['stopped']} |")
    lines += ["", "## Plateaus", "", "| width x layers | parameters | plateau bits | bits/param |", "|---|---|---|---|"]
    for p in result["plateaus"]:
        lines.append(f"| {p['width']}x{p['layers']} | {p['n_params']} | {p['bits']:.0f} | "
                     f"{p['bits'] / p['n_params']:.2f} |")
    if result["sinks"]:
        lines += ["", "## Capacity in the sinks (split placement)", "",
                  "| sink fraction | sequences | bits own | bits drop | bits in sinks | share |",
                  "|---|---|---|---|---|---|"]
        for r in result["sinks"]:
            share = "n/a" if r["sink_share"] is None else f"{r['sink_share']:.2f}"
            lines.append(f"| {r['sink_fraction']:.2f} | {r['n_sequences']} | {r['bits_own']:.0f} | "
                         f"{r['bits_drop']:.0f} | "
                         f"{r['bits_in_sinks']:.0f} | {share} |")
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for p in result["plateaus"]:
        runs = [r for r in result["runs"] if (r["width"], r["layers"]) == (p["width"], p["layers"])]
        ax.plot([r["dataset_bits"] for r in runs], [r["bits"] for r in runs], marker="o",
                label=f"{p['n_params'] / 1e3:.0f}k params")
        ax.axhline(result["bits_per_param"] * p["n_params"], ls="--", lw=0.8, color=ax.lines[-1].get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("dataset size (bits of entropy)")
    ax.set_ylabel("memorized bits")
    ax.set_title(f"Capacity: {result['bits_per_param']:.2f} bits/param (dashed: fitted plateau)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "capacity.png"), dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one small size, two dataset sizes (a smoke test)")
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "capacity"))
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--sizes", help="width x layers list, e.g. 16x1,32x2 (default: 4 sizes, 12k-43k parameters)")
    p.add_argument("--multiples", help="dataset sizes as multiples of the paper's capacity of each model, e.g. "
                                       "0.5,1,2,4 (default 0.5,1,2; quick 0.5,2)")
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--check-every", type=int, default=25, help="epochs between plateau checks")
    p.add_argument("--tol", type=float, default=0.002, help="a check is stale unless memorized bits beat the best so "
                                                            "far by this share")
    p.add_argument("--patience", type=int, default=2, help="stale checks before the learning rate is cut (x0.3)")
    p.add_argument("--lr-drops", type=int, default=3, help="learning-rate cuts before a plateau ends the run")
    p.add_argument("--budget-minutes", type=float, help="training time for all runs together, shared in proportion "
                                                        "to each run's tokens x parameters (default 38; quick 1)")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--p-mem", type=float, default=0.3)
    p.add_argument("--no-sinks", action="store_true", help="skip the sinks part")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    if args.max_epochs is None:
        args.max_epochs = preset["max_epochs"]
    sizes = preset["sizes"] if not args.sizes else [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    torch.set_num_threads(args.threads)
    if args.budget_minutes is None:
        args.budget_minutes = preset["budget_minutes"]
    plan = [(w, l, n_params(build(args.vocab, args.seq_len, w, l, args.seed))) for w, l in sizes]
    multiples = preset["multiples"] if not args.multiples else [float(m) for m in args.multiples.split(",")]
    plan = [(w, l, n, dataset_sizes(n, multiples, args.seq_len, args.vocab)) for w, l, n in plan]
    sink_w, sink_l = preset["sink_size"]
    sink_n = n_params(build(args.vocab, args.seq_len, sink_w, sink_l, args.seed))
    sink_seq = dataset_sizes(sink_n, [1.0], args.seq_len, args.vocab)[0]
    work = sum(n * k for _, _, n, ks in plan for k in ks)
    if not args.no_sinks:
        work += len(preset["sink_fractions"]) * sink_n * sink_seq
    budget = Budget(args.budget_minutes * 60, work)

    start = time.perf_counter()
    runs, plateaus = [], []
    for width, layers, n, n_seqs in plan:
        mine = []
        for n_seq in n_seqs:
            row = measure(args.vocab, args.seq_len, width, layers, n_seq, args, budget.share(n * n_seq))
            budget.spend(n * n_seq, row["train_s"])
            print(f"{width}x{layers} ({n} params) N={n_seq}: {row['bits']:.0f} bits = {row['bits'] / n:.2f} bits/param "
                  f"({row['epochs']} epochs, {row['lr_drops']} LR cuts, stopped by {row['stopped']}, "
                  f"{row['train_s']} s)",
                  flush=True)
            mine.append(row)
        runs += mine
        best = max(mine, key=lambda r: r["bits"])
        plateaus.append({"width": width, "layers": layers, "n_params": n, "bits": best["bits"],
                         "n_sequences": best["n_sequences"]})
    bpp = fit_bits_per_param(plateaus)
    sinks = []
    if not args.no_sinks:
        for frac in preset["sink_fractions"]:
            row = measure(args.vocab, args.seq_len, sink_w, sink_l, sink_seq, args, budget.share(sink_n * sink_seq),
                          sinks_p_gen=1 - frac)
            budget.spend(sink_n * sink_seq, row["train_s"])
            print(f"sinks {frac:.2f} of MLP units, {sink_w}x{sink_l}, N={sink_seq}: own {row['bits_own']:.0f}, drop "
                  f"{row['bits_drop']:.0f}, in sinks {row['bits_in_sinks']:.0f} bits ({row['epochs']} epochs, stopped "
                  f"by {row['stopped']})", flush=True)
            sinks.append(row)
    result = {
        "bits_per_param": bpp,
        "paper_fp32": PAPER_FP32,
        "relative_error": bpp / PAPER_FP32 - 1,
        "within_tolerance": abs(bpp / PAPER_FP32 - 1) <= TOLERANCE,
        "dtype": "float32",
        "plateaus": plateaus,
        "runs": runs,
        "sinks": sinks,
        "settings": {"vocab": args.vocab, "seq_len": args.seq_len, "lr": args.lr, "batch_size": args.batch_size,
                     "max_epochs": args.max_epochs, "check_every": args.check_every, "tol": args.tol,
                     "patience": args.patience, "lr_drops": args.lr_drops,
                     "budget_minutes": args.budget_minutes, "sizes": [f"{w}x{l}" for w, l in sizes],
                     "multiples": multiples,
                     "p_mem": args.p_mem, "quick": args.quick, "threads": args.threads},
        "seconds": round(time.perf_counter() - start, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
    }
    write_outputs(args.out, result)
    print(f"bits per parameter (fp32 fit over {len(plateaus)} sizes): {bpp:.2f} (paper {PAPER_FP32}; "
          f"{result['relative_error']:+.0%}); {result['seconds']} s; wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
