"""Trainer callbacks of the recipe: the routing audit across ranks, throughput, the launch record, and
ZeRO-3 checkpoints rewritten in the layout memsinks reads. The memorization probes themselves are
``memsinks.callbacks``; these only watch the run."""

from __future__ import annotations

import hashlib
import os
import time

from transformers import TrainerCallback

from memsinks_recipe.common import AUDIT_FILE, LAUNCH_FILE, say, write_json
from memsinks_recipe.launch import Launch


class RoutingAudit(TrainerCallback):
    """Records, on each rank, a fingerprint of the sink mask of every ID it routes; checks ranks agree at the end.

    Sinks' routing is a hash of (routing seed, ID, block, unit) and must not depend on which rank
    sees a sequence. The audit wraps the router's ``pool_bits`` on this process while training
    runs, fingerprints each ID's mask (blake2b of its bits) the first time it is computed, gathers
    the fingerprints of all ranks at the end, and fails the run if two ranks routed one ID differently.
    """

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.fingerprints: dict[int, str] = {}
        self.router = None
        self.result: dict | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from memsinks.model import get_router, has_sinks

        if model is None or not has_sinks(model) or self.router is not None:
            return
        self.router = get_router(model)
        original = self.router.pool_bits
        seen = self.fingerprints

        def recording_pool_bits(ids, device):
            ids = [int(i) for i in ids]
            rows = original(ids, device)
            new = [k for k, sid in enumerate(ids) if sid not in seen]
            if new:  # one device-to-host copy per batch, for the IDs not seen before
                for k, row in zip(new, rows[new].cpu().numpy()):
                    seen[ids[k]] = hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest()
            return rows

        self.router.pool_bits = recording_pool_bits

    def on_train_end(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if self.router is None:
            return
        del self.router.pool_bits  # the instance attribute; the class method is back
        self.router = None
        per_rank = [self.fingerprints]
        if dist.is_available() and dist.is_initialized():
            per_rank = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, self.fingerprints)
        agreed: dict[int, str] = {}
        mismatched = []
        for fingerprints in per_rank:
            for sid, fp in fingerprints.items():
                if agreed.setdefault(sid, fp) != fp:
                    mismatched.append(sid)
        shared = sum(1 for sid in agreed if sum(sid in f for f in per_rank) > 1)
        self.result = {"world_size": len(per_rank), "ids_routed": len(agreed), "ids_routed_per_rank":
                       [len(f) for f in per_rank], "ids_routed_on_several_ranks": shared,
                       "mismatched_ids": sorted(set(mismatched)),
                       "per_rank": [{str(k): v for k, v in sorted(f.items())} for f in per_rank]}
        if args.process_index == 0:
            os.makedirs(self.output_dir, exist_ok=True)
            write_json(os.path.join(self.output_dir, AUDIT_FILE), self.result)
        if mismatched:
            raise RuntimeError(f"Routing audit: {len(set(mismatched))} sequence IDs were routed to different sinks on "
                               "different ranks. Every rank must run the same memsinks version and SinksConfig.")
        say(f"routing audit: {len(agreed)} IDs routed, {shared} of them on more than one of {len(per_rank)} rank(s); "
            "every ID had the same mask on every rank")


class Throughput(TrainerCallback):
    """Tokens per second over all ranks, from the end of step ``skip`` (warm-up) to the end of training."""

    def __init__(self, skip: int = 2):
        self.skip = skip
        self.first_step = 0
        self.start: tuple[float, int, int] | None = None
        self.end: tuple[float, int, int] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.first_step = state.global_step  # a resumed run counts from where it resumed

    def on_step_end(self, args, state, control, **kwargs):
        now = (time.perf_counter(), int(state.num_input_tokens_seen or 0), state.global_step)
        if self.start is None and state.global_step >= self.first_step + self.skip:
            self.start = now
        self.end = now

    def tokens_per_second(self) -> float | None:
        if self.start is None or self.end is None or self.end[0] <= self.start[0]:
            return None
        return (self.end[1] - self.start[1]) / (self.end[0] - self.start[0])

    def measured_steps(self) -> int:
        return 0 if self.start is None else self.end[2] - self.start[2]


class LaunchRecord(TrainerCallback):
    """Writes the launch (processes, engine, global batch) into every checkpoint, so a resumption can compare."""

    def __init__(self, launch: Launch, global_batch: int):
        self.payload = {"world_size": launch.world_size, "engine": launch.engine, "zero_stage": launch.zero_stage,
                        "global_batch_size": global_batch}

    def on_save(self, args, state, control, **kwargs):
        if args.process_index == 0:
            checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(checkpoint):
                write_json(os.path.join(checkpoint, LAUNCH_FILE), self.payload)


# ============================================================================================ training


class StockLayoutCheckpoints(TrainerCallback):
    """Under ZeRO-3, rewrite each checkpoint's ``model.safetensors`` in the stock layout (rank 0).

    ZeRO-3 gathers the weights it saves by parameter name, not through ``state_dict()``, so the
    sink wrappers' tensors keep their own names (``...c_proj.base.weight``, ``...sink_weight``),
    which neither stock transformers nor ``memsinks.from_pretrained`` read. Resuming does not use
    that file (DeepSpeed restores from its own ``global_step*`` shards), so rewriting it only makes
    every checkpoint usable by the probes and ``memsinks ablate``.
    """

    def __init__(self, make_model):
        self.make_model = make_model
        self.model = None

    def on_save(self, args, state, control, **kwargs):
        from memsinks_recipe.model import restore_stock_layout, zero3_lifted

        if args.process_index == 0:
            checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(checkpoint):
                with zero3_lifted(args):
                    self.model = restore_stock_layout(checkpoint, self.model or self.make_model())
