"""What every bad-input test of a file checks: the inputs are byte-identical afterwards and nothing was left behind."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Iterator


def tree_digest(root: str | os.PathLike) -> dict[str, str]:
    """{path relative to ``root``: sha256 of its bytes} for every file below ``root``, hidden ones included."""
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def files_unchanged(*roots: str | os.PathLike) -> Iterator[None]:
    """Assert that every file below ``roots`` is byte-identical after the block and that no file appeared
    (no temporary file, no 0-byte file), even when the block raises."""
    before = {str(r): tree_digest(r) for r in roots}
    try:
        yield
    finally:
        for root in roots:
            after = tree_digest(root)
            changed = sorted({name for name, _ in set(after.items()) ^ set(before[str(root)].items())})
            assert not changed, f"files below {root} changed, appeared or vanished: {changed}"
