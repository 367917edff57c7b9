"""Cost of a DP-SGD training step against the non-private step, on the same model and batch, in one run.

For a tiny GPT-2 (Conv1D, tied embeddings) and a tiny Llama (RMSNorm, rotary), batch
16 x 128 tokens on the CPU, five arms take turns on the same batch:

- ``non-private``: forward, loss, backward, AdamW step (the stock Trainer's step);
- ``dp hooks``:  memsinks' clipper with every per-unit gradient materialised;
- ``dp ghost``:  memsinks' clipper with ghost norms wherever a weight allows;
- ``dp auto``:   the default, chosen per parameter by memory (see memsinks.privacy.grad_sample);
- ``opacus``:    reference: Opacus 1.6's GradSampleModule (hooks) + DPOptimizer, used as its
  docs show, with per-row position_ids (its hooks need them on GPT-2).

Every DP arm clips per example to C=1 and adds noise (σ=1) through an Opacus optimizer; memsinks'
arms draw it as a private run does by default (OS-entropy seeds, the floating-point-hardened
sum of four Gaussians).
Step times are medians over interleaved steps (load on a shared machine hits all arms
alike), split into forward, backward, clipping (norms + clipped sums) and optimizer step.
Peak memory is the high-water mark of the process's resident memory during steps of that
arm alone, each arm in a fresh interpreter, minus the memory before its first step.

    python benchmarks/dp_overhead.py [--steps 12] [--batch 16] [--seq 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

ARMS = ("non-private", "dp hooks", "dp ghost", "dp auto", "opacus")
PHASES = ("forward", "backward", "clip", "step")


def build(family: str, args):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if family == "gpt2":
        cfg = GPT2Config(n_layer=args.layers, n_embd=args.hidden, n_head=4, n_inner=args.inner, n_positions=args.seq,
                         vocab_size=args.vocab, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return GPT2LMHeadModel(cfg)
    cfg = LlamaConfig(num_hidden_layers=args.layers, hidden_size=args.hidden, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=args.inner, max_position_embeddings=args.seq,
                      vocab_size=args.vocab)
    return LlamaForCausalLM(cfg)


class Arm:
    """One way of taking a training step; ``step`` returns the seconds of each phase."""

    def __init__(self, name: str, family: str, batch: dict, args):
        from memsinks.privacy.grad_sample import PerUnitClipper
        from memsinks.privacy.optimizer import PrivateOptimizer
        from memsinks.privacy.randomness import PrivacyRandomness

        self.name = name
        self.steps_taken = 0
        self.model = build(family, args).train()
        self.batch = batch
        self.rows = batch["input_ids"].shape[0]
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.clipper = None
        if name == "opacus":
            from opacus import GradSampleModule
            from opacus.optimizers import DPOptimizer

            self.model = GradSampleModule(self.model, batch_first=True, loss_reduction="sum")
            optimizer = DPOptimizer(optimizer, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=self.rows,
                                    loss_reduction="sum")
        elif name.startswith("dp"):
            self.clipper = PerUnitClipper(self.model, max_grad_norm=1.0, clipping=name.split()[1])
            optimizer = PrivateOptimizer(optimizer, noise_multiplier=1.0, max_grad_norm=1.0,
                                         expected_batch_size=self.rows, randomness=PrivacyRandomness.secure(),
                                         step_index=lambda: self.steps_taken)
        self.optimizer = optimizer

    def step(self) -> dict:
        from memsinks.privacy.loss import causal_lm_row_losses

        b = self.batch
        t = {}
        start = time.perf_counter()
        if self.name == "non-private":
            loss = self.model(input_ids=b["input_ids"], labels=b["labels"], use_cache=False).loss
            t["forward"] = time.perf_counter() - start
            loss.backward()
            t["backward"] = time.perf_counter() - start - t["forward"]
            t["clip"] = 0.0
        elif self.name == "opacus":
            logits = self.model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits
            loss = causal_lm_row_losses(logits, b["labels"]).sum()
            t["forward"] = time.perf_counter() - start
            loss.backward()
            t["backward"] = time.perf_counter() - start - t["forward"]
            t["clip"] = 0.0  # Opacus clips inside optimizer.step
        else:
            with self.clipper.capture(torch.arange(self.rows), self.rows):
                logits = self.model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits
                loss = causal_lm_row_losses(logits, b["labels"]).sum()
                t["forward"] = time.perf_counter() - start
                loss.backward()
                t["backward"] = time.perf_counter() - start - t["forward"]
            mark = time.perf_counter()
            self.clipper.clip_and_accumulate()
            t["clip"] = time.perf_counter() - mark
        mark = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps_taken += 1
        t["step"] = time.perf_counter() - mark
        t["total"] = time.perf_counter() - start
        return t


def make_batch(args) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
    return {"input_ids": x, "labels": x, "position_ids": torch.arange(args.seq).expand(args.batch, args.seq)}


def time_family(family: str, args) -> dict:
    batch = make_batch(args)
    arms = [Arm(name, family, batch, args) for name in ARMS]
    times = {a.name: [] for a in arms}
    for step in range(args.steps + 2):
        order = arms[step % len(arms):] + arms[:step % len(arms)]  # rotate who goes first
        for arm in order:
            t = arm.step()
            if step >= 2:  # two warm-up steps
                times[arm.name].append(t)
    out = {}
    for name, ts in times.items():
        out[name] = {k: statistics.median(x[k] for x in ts) for k in PHASES + ("total",)}
    auto = next(a for a in arms if a.name == "dp auto").clipper
    out["auto_ghost_params"] = sorted(n for n, m in auto.modes().items() if m == "ghost")
    return out


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_of(family: str, arm_name: str, args) -> int:
    """Run in a fresh interpreter: peak resident bytes during three steps, above the resident bytes before them.

    The kernel's high-water mark (VmHWM) is reset to the current resident size just before
    the steps (``/proc/self/clear_refs``), so imports and model building do not count; the
    parent sets ``MALLOC_MMAP_THRESHOLD_`` so that freed tensors leave the resident set
    instead of lingering in malloc's heap.
    """
    batch = make_batch(args)
    arm = Arm(arm_name, family, batch, args)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_bytes("VmRSS")
    for _ in range(3):
        arm.step()
    return _status_bytes("VmHWM") - before


def measure_memory(family: str, args) -> dict:
    out = {}
    for name in ARMS:
        cmd = [sys.executable, __file__, "--memory-of", family, name] + _forwarded(args)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 16)}
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        out[name] = int(proc.stdout.strip().splitlines()[-1])
    return out


def _forwarded(args) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
            if k in ("batch", "seq", "layers", "hidden", "inner", "vocab", "threads")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--inner", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--families", default="gpt2,llama")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--memory-of", nargs=2, metavar=("FAMILY", "ARM"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_of:
        print(memory_of(args.memory_of[0], args.memory_of[1], args))
        return
    results = {}
    for family in args.families.split(","):
        results[family] = {"time": time_family(family, args), "memory": measure_memory(family, args)}
    print(f"machine: {platform.machine()} torch {torch.__version__}, {args.threads} threads, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; batch {args.batch}x{args.seq}, {args.layers} layers, "
          f"hidden {args.hidden}, MLP {args.inner}, vocab {args.vocab}; median of {args.steps} interleaved steps")
    for family, r in results.items():
        base_t = r["time"]["non-private"]["total"]
        base_m = r["memory"]["non-private"]
        print(f"\n{family}: arm         | step ms | x non-private | forward / backward / clip / step ms | "
              "peak MiB | x non-private")
        for name in ARMS:
            t = r["time"][name]
            m = r["memory"][name]
            phases = " / ".join(f"{1000 * t[k]:.0f}" for k in PHASES)
            default = "  <- default" if name == "dp auto" else ""
            print(f"{family}: {name:<12}| {1000 * t['total']:7.0f} | {t['total'] / base_t:12.2f}x | {phases:<35} | "
                  f"{m / 2**20:8.0f} | {m / base_m:12.2f}x{default}")
        ghost = r["time"]["auto_ghost_params"]
        print(f"{family}: dp auto used ghost norms for {len(ghost)} parameter(s){': ' + ', '.join(ghost) if ghost else ''}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"results": results, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
