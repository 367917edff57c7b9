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

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

import memsinks
from memsinks.ablation.checkpoint import load_sinks_checkpoint, tokenizer_files
from memsinks.architectures import get_width, layout_for

PROBE_BATCH = (2, 16)  # (sequences, tokens) of the random batch whose logits the export must reproduce


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
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _resolved(path: str | os.PathLike) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def _within(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def check_output_dir(out: str | os.PathLike, checkpoint: str | os.PathLike, force: bool) -> None:
    """Refuse an ``out`` that overlaps the input checkpoint, is a file, is not writable, or is a non-empty
    directory without ``force``."""
    out_r, ckpt_r = _resolved(out), _resolved(checkpoint)
    if _within(out_r, ckpt_r) or _within(ckpt_r, out_r):
        raise ValueError(
            f"--out {out} overlaps the input checkpoint {checkpoint}; memsinks never writes into (or over) its "
            "input. Choose a directory outside it."
        )
    if os.path.lexists(out) and not os.path.isdir(out):
        raise FileExistsError(f"--out {out} exists and is not a directory.")
    if os.path.isdir(out) and os.listdir(out) and not force:
        raise FileExistsError(
            f"--out {out} exists and is not empty. Choose a new directory, or pass --force (force=True) to replace "
            "its contents once the new model is written and checked."
        )
    existing = os.path.dirname(out_r)
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"Cannot write beside --out {out}: {existing} is not writable.")


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, checkpoint: str | os.PathLike, force: bool = False) -> Iterator[str]:
    """Yield a fresh temporary directory beside ``out``; on a clean exit it becomes ``out``.

    On any exception (including KeyboardInterrupt) the temporary directory is deleted and
    ``out`` is left as it was. With ``force``, an existing ``out`` is moved aside, replaced,
    and deleted only after the new one is in place.
    """
    check_output_dir(out, checkpoint, force)
    out = os.path.abspath(os.fspath(out))
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
    try:
        yield tmp
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(tmp: str, out: str) -> None:
    if not os.path.isdir(out):
        os.rename(tmp, out)
        return
    if not os.listdir(out):
        os.rmdir(out)
        os.rename(tmp, out)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def probe_batch(model: nn.Module, seed: int = 0) -> torch.Tensor:
    """A fixed random batch of token IDs (LongTensor ``PROBE_BATCH``) in the model's vocabulary."""
    vocab = int(model.config.vocab_size)
    return torch.randint(0, vocab, PROBE_BATCH, generator=torch.Generator().manual_seed(seed))


def logit_tolerance(dtype: torch.dtype, reference: torch.Tensor) -> float:
    """Largest acceptable |difference| of logits after removal: removing zeroed units changes summation order."""
    scale = max(1.0, float(reference.abs().max()))
    return (1e-4 if dtype in (torch.float32, torch.float64) else 2e-2) * scale


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


# Runs in a fresh interpreter: loads the export with stock transformers only and prints the max |logit diff|.
_VERIFY_PLAIN = """
import json, sys
sys.modules["memsinks"] = None  # the shipped model must load where memsinks is not installed
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
model_dir, probe_path = sys.argv[1], sys.argv[2]
probe = load_file(probe_path)
model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()
with torch.no_grad():
    logits = model(probe["input_ids"]).logits.float()
print(json.dumps({"max_abs_diff": float((logits - probe["expected"]).abs().max())}))
"""


def run_verifier(code: str, model_dir: str, expected: dict[str, torch.Tensor]) -> float:
    """Run ``code`` on ``model_dir`` in a fresh interpreter with the probe tensors; returns its max |diff|."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="memsinks-verify-") as tmp:
        probe_path = os.path.join(tmp, "probe.safetensors")
        save_file({k: v.contiguous() for k, v in expected.items()}, probe_path)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "-c", code, model_dir, probe_path], capture_output=True, text=True,
                              env=env, cwd=tmp, timeout=1800)
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
            f"The exported model's logits differ from the input's drop mode by up to {diff:.3g} (tolerance {tol:.3g}); "
            "nothing was written. Please report this with the checkpoint's config.json and sinks_config.json."
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
        force: replace a non-empty ``out`` (only after the new model is written and checked).
        trust_pickle: allow a checkpoint whose weights are pickle (read with ``weights_only=True``).
    Returns:
        the ``ExportResult``; raises ExportVerificationError (and writes nothing) when the
        written model does not reproduce the input's ``drop`` logits.
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
        steps.update()
        steps.set_postfix_str("removing sinks")
        plain = memsinks.remove_sinks(model, mode="drop", prune=prune)
        steps.update()
        with atomic_output_dir(out, checkpoint, force) as tmp:
            steps.set_postfix_str("saving")
            plain.save_pretrained(tmp)
            copied = copy_tokenizer(checkpoint, tmp)
            steps.update()
            steps.set_postfix_str("verifying in a fresh process")
            diff = verify_plain_export(tmp, input_ids, expected, dtype)
            steps.update()
            size = directory_size(tmp)
    finally:
        steps.close()
    return ExportResult(
        out_dir=os.path.abspath(os.fspath(out)), checkpoint=os.path.abspath(checkpoint), kind="sinks removed",
        parameters=sum(p.numel() for p in plain.parameters()), size_bytes=size, mlp_width_before=width_before,
        mlp_width_after=mlp_width(plain), max_abs_logit_diff=diff,
        extra={"pruned": bool(prune), "tokenizer_files": copied},
    )
