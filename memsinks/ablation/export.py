"""Turn a checkpoint with sinks into the model that ships: sinks removed, written atomically, checked.

``export_without_sinks`` loads the checkpoint (safely, ``memsinks.ablation.checkpoint``),
records the logits of its ``drop`` mode on a fixed probe batch, removes the sinks with
``memsinks.remove_sinks`` (split placement: sink units pruned, so the MLP is smaller, or
zeroed with ``prune=False``; append: the original architecture), and saves the plain model
and the tokenizer into a temporary directory beside ``out``. A fresh Python process in which
memsinks cannot be imported then loads that directory with stock
``AutoModelForCausalLM.from_pretrained`` and must reproduce the recorded logits; only then is
the directory renamed to ``out``. An interruption at any point leaves ``out`` as it was
(absent, or the old contents under ``force``), never half-written, and the input checkpoint
is never written to.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

import memsinks
from memsinks.ablation.checkpoint import load_sinks_checkpoint, tokenizer_files
from memsinks.ablation.output_dir import (
    VERIFY_PREFIX, atomic_output_dir, check_output_dir, make_owned_dir, write_export_marker,
)
from memsinks.architectures import get_width, layout_for

PROBE_BATCH = (2, 16)  # (sequences, tokens) of the random batch whose logits the export must reproduce
# A trained language model's logits stay within a few hundred; larger ones mean damaged weights (a flipped
# exponent bit, an overflow), and a tolerance relative to them would let any error pass.
MAX_ABS_LOGIT = 1e4
TOLERANCE_SCALE_CAP = 100.0  # the relative part of the tolerance grows with the logits' scale up to here


class ExportVerificationError(RuntimeError):
    """The written model did not reproduce the expected logits; nothing was written to ``out``."""


@dataclass
class ExportResult:
    """What an export wrote: where, how big, and how closely it reproduced the input's expected logits."""

    out_dir: str
    checkpoint: str
    kind: str  # "sinks removed" or "targeted deletion"
    parameters: int
    size_bytes: int
    mlp_width_before: int
    mlp_width_after: int
    max_abs_logit_diff: float
    logit_tolerance: float | None = None  # the largest |diff| the check accepted
    max_abs_logit: float | None = None  # the scale of the expected logits the tolerance was taken from
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def probe_batch(model: nn.Module, seed: int = 0) -> torch.Tensor:
    """A fixed random batch of token IDs (LongTensor ``PROBE_BATCH``) in the model's vocabulary."""
    vocab = int(model.config.vocab_size)
    return torch.randint(0, vocab, PROBE_BATCH, generator=torch.Generator().manual_seed(seed))


def logit_tolerance(dtype: torch.dtype, reference: torch.Tensor) -> float:
    """Largest acceptable |difference| of logits after removal: an absolute floor plus a share of their scale.

    Removing zeroed units changes the order of sums, so float32 logits differ in their last
    bits, more for larger logits. The relative part stops growing at ``TOLERANCE_SCALE_CAP``:
    logits of a damaged model can reach millions, and a share of those would pass any error.
    """
    floor, relative = (1e-4, 1e-4) if dtype in (torch.float32, torch.float64) else (2e-2, 2e-2)
    return floor + relative * min(float(reference.abs().max()), TOLERANCE_SCALE_CAP)


def check_reference_logits(reference: torch.Tensor, checkpoint: str) -> float:
    """The largest |logit| of the input's expected logits; raise if they are not those of a sound model."""
    largest = float(reference.abs().max())
    if not largest <= MAX_ABS_LOGIT:
        raise ExportVerificationError(
            f"{checkpoint}: the input model's logits reach {largest:.3g} in magnitude on the check batch; a trained "
            f"language model's stay far below {MAX_ABS_LOGIT:.0e}. Its weights look damaged (a flipped bit, an "
            "overflow, NaN), so nothing was written. Check the checkpoint (or re-save it from training).")
    return largest


def mlp_width(model: nn.Module) -> int:
    """The MLP width the model's config states."""
    return get_width(model.config, layout_for(model.config.model_type))


def directory_size(path: str) -> int:
    """Bytes of all files under ``path``."""
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def copy_tokenizer(checkpoint: str, out: str) -> list[str]:
    """Copy the checkpoint's tokenizer files into ``out``; returns their names."""
    names = []
    for path in tokenizer_files(checkpoint):
        shutil.copy2(path, os.path.join(out, os.path.basename(path)))
        names.append(os.path.basename(path))
    return names


# Runs in a fresh interpreter: loads the export with stock transformers only (strictly: every tensor present and
# used, with its shape) and prints the max |logit diff|.
_VERIFY_PLAIN = """
import json, sys
sys.modules["memsinks"] = None  # the shipped model must load where memsinks is not installed
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
model_dir, probe_path = sys.argv[1], sys.argv[2]
probe = load_file(probe_path)
model, info = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True, output_loading_info=True)
bad = {k: sorted(map(str, v))[:5] for k, v in info.items() if k in ("missing_keys", "unexpected_keys",
       "mismatched_keys") and v}
if bad:
    sys.exit(f"the written weights do not match the written config.json: {bad}")
with torch.no_grad():
    logits = model.eval()(probe["input_ids"]).logits.float()
print(json.dumps({"max_abs_diff": float((logits - probe["expected"]).abs().max())}))
"""


def run_verifier(code: str, model_dir: str, expected: dict[str, torch.Tensor]) -> float:
    """Run ``code`` on ``model_dir`` in a fresh interpreter with the probe tensors; returns its max |diff|.

    The probe tensors go to a tagged temporary folder that the next export removes if this
    process is killed before it can (``output_dir.atomic_output_dir``).
    """
    from safetensors.torch import save_file

    tmp = make_owned_dir(tempfile.gettempdir(), VERIFY_PREFIX)
    try:
        probe_path = os.path.join(tmp, "probe.safetensors")
        save_file({k: v.contiguous() for k, v in expected.items()}, probe_path)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "-c", code, model_dir, probe_path], capture_output=True, text=True,
                              env=env, cwd=tmp, timeout=1800)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if proc.returncode != 0:
        raise ExportVerificationError(
            "The exported model could not be loaded and run in a fresh process; nothing was written.\n"
            + proc.stderr[-3000:]
        )
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["max_abs_diff"])


def verify_plain_export(model_dir: str, input_ids: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> float:
    """Check in a process without memsinks that ``model_dir`` gives ``expected`` logits on ``input_ids``."""
    diff = run_verifier(_VERIFY_PLAIN, model_dir, {"input_ids": input_ids, "expected": expected.float()})
    tol = logit_tolerance(dtype, expected)
    if not diff <= tol:
        raise ExportVerificationError(
            f"The exported model's logits differ from the input's drop mode by up to {diff:.3g} (tolerance {tol:.3g} "
            f"for logits up to {float(expected.abs().max()):.3g}); nothing was written. Please report this with the "
            "checkpoint's config.json and sinks_config.json."
        )
    return diff


def export_without_sinks(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    prune: bool = True,
    force: bool = False,
    trust_pickle: bool = False,
    progress: bool = True,
) -> ExportResult:
    """Write the checkpoint's ``drop``-mode model to ``out`` as a plain transformers checkpoint.

    Args:
        prune: split placement: remove the sink units from the MLPs (a smaller model); False
            zeroes their down-projection weights and keeps the width. Append placement always
            restores the original architecture.
        force: replace an earlier export at ``out`` (a folder holding ``memsinks_export.json``;
            only after the new model is written and checked). Any other non-empty ``out`` is refused.
        trust_pickle: allow a checkpoint whose weights are pickle (read with ``weights_only=True``).
    Returns:
        the ``ExportResult``; raises ExportVerificationError (and writes nothing) when the
        input's logits are not those of a sound model, or the written model does not
        reproduce the input's ``drop`` logits within ``logit_tolerance``.
    """
    checkpoint = os.fspath(checkpoint)
    check_output_dir(out, checkpoint, force)
    steps = tqdm(total=4, desc="export", unit="step", disable=not progress)
    try:
        steps.set_postfix_str("loading")
        model = load_sinks_checkpoint(checkpoint, trust_pickle=trust_pickle)
        dtype = next(model.parameters()).dtype
        width_before = mlp_width(model)
        input_ids = probe_batch(model)
        with torch.no_grad(), memsinks.sinks_mode(model, "drop"):
            expected = model(input_ids).logits.float()
        largest = check_reference_logits(expected, checkpoint)
        steps.update()
        steps.set_postfix_str("removing sinks")
        plain = memsinks.remove_sinks(model, mode="drop", prune=prune)
        steps.update()
        with atomic_output_dir(out, checkpoint, force) as tmp:
            steps.set_postfix_str("saving")
            plain.save_pretrained(tmp)
            copied = copy_tokenizer(checkpoint, tmp)
            write_export_marker(tmp, "sinks removed", checkpoint)
            steps.update()
            steps.set_postfix_str("verifying in a fresh process")
            diff = verify_plain_export(tmp, input_ids, expected, dtype)
            steps.update()
    finally:
        steps.close()
    return ExportResult(
        out_dir=os.path.abspath(os.fspath(out)), checkpoint=os.path.abspath(checkpoint), kind="sinks removed",
        parameters=sum(p.numel() for p in plain.parameters()), size_bytes=directory_size(os.fspath(out)),
        mlp_width_before=width_before, mlp_width_after=mlp_width(plain), max_abs_logit_diff=diff,
        logit_tolerance=logit_tolerance(dtype, expected), max_abs_logit=largest,
        extra={"pruned": bool(prune), "tokenizer_files": copied},
    )
