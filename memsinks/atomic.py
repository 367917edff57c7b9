"""Writing a file so that it is either the old one or the complete new one, never a partial one."""

from __future__ import annotations

import contextlib
import os
import secrets


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it, flushed to disk, then renamed over ``path``.

    A crash, a full disk or any other error leaves ``path`` as it was (absent, or the old
    contents) and removes the temporary file. The new file gets the user's umask, as any new file.
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
