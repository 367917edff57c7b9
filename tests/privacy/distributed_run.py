"""A private training run launched in 1 or 2 processes by tests/privacy/test_distributed.py (not a test itself).

    python tests/privacy/distributed_run.py OUTPUT_DIR [--resume CHECKPOINT] [--measure-noise]

Trains the tiny GPT-2 of tests.privacy.helpers on N learnable rows for 4 steps (checkpoint at
step 2) with a global expected batch of 8 units, σ = 1 and reproducible randomness, so that a
1-process and a 2-process run draw the same units and noise. Rank 0 writes
``OUTPUT_DIR/result.json`` (ε, steps, world size) and ``OUTPUT_DIR/weights.pt``. With
``--measure-noise`` every rank then steps a ``PrivateOptimizer`` on zero gradients 40 times
and rank 0 records the standard deviation of the noise the update received.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import memsinks  # noqa: E402
from tests.privacy.helpers import (DISTRIBUTED_BATCH, DISTRIBUTED_SIGMA, N, no_dropout, pattern_dataset,  # noqa: E402
                                   stock_trainer)
from tests.conftest import tiny_model  # noqa: E402

NOISE_C, NOISE_STEPS, NOISE_WIDTH = 0.5, 40, 20_000


def train(output_dir: str, resume: str | None):
    world = int(__import__("os").environ.get("WORLD_SIZE", "1"))
    trainer = stock_trainer(no_dropout(tiny_model("gpt2")), pattern_dataset(N), output_dir,
                            per_device_train_batch_size=DISTRIBUTED_BATCH // world, max_steps=4,
                            save_strategy="steps", save_steps=2, ddp_find_unused_parameters=False)
    trainer = memsinks.make_private(trainer, memsinks.PrivacyConfig(
        noise_multiplier=DISTRIBUTED_SIGMA, accountant="rdp", reproducible=True, physical_batch_size=32))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def measure_noise(trainer) -> float | None:
    """The standard deviation of the noise per coordinate of the summed gradient, over many steps (rank 0)."""
    from memsinks.privacy.optimizer import PrivateOptimizer
    from memsinks.privacy.randomness import PrivacyRandomness

    p = torch.nn.Parameter(torch.zeros(NOISE_WIDTH))
    steps = iter(range(NOISE_STEPS))
    current = [0]
    optimizer = PrivateOptimizer(torch.optim.SGD([p], lr=0.0), noise_multiplier=DISTRIBUTED_SIGMA,
                                 max_grad_norm=NOISE_C, expected_batch_size=DISTRIBUTED_BATCH,
                                 randomness=PrivacyRandomness.secure().shared(), step_index=lambda: current[0])
    seen = []
    for current[0] in steps:
        p.summed_grad = torch.zeros_like(p)
        optimizer.step()
        seen.append(p.grad.detach().clone() * DISTRIBUTED_BATCH)  # undo the division by the expected batch
    return float(torch.stack(seen).std())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--resume")
    parser.add_argument("--measure-noise", action="store_true")
    args = parser.parse_args()
    trainer = train(args.output_dir, args.resume)
    noise = measure_noise(trainer) if args.measure_noise else None
    if trainer.args.process_index == 0:
        out = Path(args.output_dir)
        torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, out / "weights.pt")
        (out / "result.json").write_text(json.dumps({
            "world_size": trainer.args.world_size, "epsilon": trainer.privacy.ledger.epsilon(),
            "steps": trainer.privacy.ledger.steps, "global_step": trainer.state.global_step, "noise_std": noise,
            "expected_batch_size": trainer.privacy.expected_batch_size, "sample_rate": trainer.privacy.sample_rate}))
    if torch.distributed.is_initialized():  # no process tears gloo down while another still has collectives in flight
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
    # done and printed: skip the interpreter's teardown, where gloo's threads occasionally abort a
    # finished process ("terminate called without an active exception")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
