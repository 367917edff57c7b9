"""Files the tools read and write: text inputs read strictly, outputs written atomically and never over an input.

An output file (a ``--json`` report, a plot) is written to a temporary file in its own folder
and renamed onto its name only when complete, so an interruption or a full disk leaves the
old file or none, never a half-written or 0-byte one, and the temporary file is removed on
every error path. Without ``force`` the final rename refuses a name that appeared meanwhile
(``os.link`` onto an existing name fails); with ``force`` the file is replaced.
``check_output_file`` runs before any work, so a refused path costs nothing: it refuses a run's
own input files, anything inside an input or output folder, a folder, an existing file
without ``force``, and a folder that does not exist.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from typing import Any, Callable, Iterable

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def user_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk (or quota) is full; safetensors reports it as a non-OSError."""
    if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
        return True
    text = str(err)
    return "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text


def disk_full_error(target: str, err: BaseException) -> OSError:
    """One clear OSError for a full disk while writing ``target`` (its temporary files are already removed)."""
    return OSError(errno.ENOSPC, f"No space left on device while writing {target}; nothing was written and the "
                                 f"temporary files were removed ({type(err).__name__}: {str(err)[:200]}). Free some "
                                 "space and run again.", target)


def _within(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(
    path: str | os.PathLike,
    option: str,
    *,
    force: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
    input_dirs: Iterable[str | os.PathLike | None] = (),
    output_dirs: Iterable[str | os.PathLike | None] = (),
) -> str:
    """Refuse an output file ``path`` (named ``option`` in messages) that would harm the user's files; return it.

    Args:
        inputs: the run's input files; ``path`` may be none of them (by name, link or hard link).
        input_dirs: folders the run reads (a checkpoint); ``path`` may not lie inside one.
        output_dirs: folders the run writes as a whole (``--out``); ``path`` may not lie inside one.
        force: replace an existing file (never an input).
    """
    path = os.fspath(path)
    if not path.strip():
        raise ValueError(f"{option} got an empty path; give a file name or leave {option} out.")
    resolved = os.path.realpath(os.path.abspath(path))
    for inp in inputs:
        if inp and (resolved == os.path.realpath(os.path.abspath(os.fspath(inp))) or _same_file(path, inp)):
            raise ValueError(f"{option} {path} is the input file {inp}; memsinks never writes over its inputs. "
                             "Choose another file name.")
    for folder in input_dirs:
        if folder and _within(resolved, os.path.realpath(os.path.abspath(os.fspath(folder)))):
            raise ValueError(f"{option} {path} lies inside the input folder {folder}; memsinks never writes into "
                             "its inputs. Choose a file outside it.")
    for folder in output_dirs:
        if folder and _within(resolved, os.path.realpath(os.path.abspath(os.fspath(folder)))):
            raise ValueError(f"{option} {path} lies inside the output folder {folder}, which receives exactly the "
                             "checked model. Write it beside that folder.")
    if os.path.isdir(path):
        raise ValueError(f"{option} {path} is a folder; give a file name.")
    if os.path.lexists(path) and not force:
        raise FileExistsError(f"{option} {path} already exists; pass --force to replace it, or choose another name.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{option} {path}: the folder {parent} does not exist; create it first.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: the folder {parent} is not writable.")
    return path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _place(tmp: str, path: str, force: bool, option: str) -> None:
    """Rename the finished ``tmp`` onto ``path``: replacing it with ``force``, else only if ``path`` is still free."""
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails on an existing name, atomically
    except FileExistsError:
        raise FileExistsError(f"{option} {path} appeared while this run was working (another run writing the same "
                              "file?); it was left as it is. Pass --force to replace it, or choose another name.")
    except OSError as err:  # a file system without hard links: check, then rename
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        if os.path.lexists(path):
            raise FileExistsError(f"{option} {path} appeared while this run was working; it was left as it is.")
        os.rename(tmp, path)
        return
    os.unlink(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, force: bool = False,
                 option: str = "output") -> str:
    """Write ``path`` by calling ``write(temporary_path)``, then renaming the result onto ``path``.

    The temporary file lies beside ``path`` with the same extension (so a plotting library
    picks the right format); it is removed on every error path, and a full disk becomes one
    OSError that names ``path``. An empty result is refused rather than left as a 0-byte file.
    """
    path = os.fspath(path)
    parent, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".partial{os.path.splitext(name)[1]}", dir=parent)
    os.close(fd)
    try:
        write(tmp)
        if os.path.getsize(tmp) == 0:
            raise OSError(errno.EIO, f"Writing {option} {path} produced an empty file; nothing was written.", path)
        os.chmod(tmp, 0o666 & ~user_umask())
        _place(tmp, path, force, option)
    except BaseException as err:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if not isinstance(err, KeyboardInterrupt) and is_disk_full(err):
            raise disk_full_error(path, err) from err
        raise
    return path


def json_bytes(payload: Any) -> bytes:
    """``payload`` as strict JSON (no NaN or infinity), indented, with a final newline."""
    return (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode("utf-8")


def write_json(path: str | os.PathLike, payload: Any, *, force: bool = False, option: str = "--json") -> str:
    """Write ``payload`` to ``path`` as strict JSON, atomically (see ``atomic_write``); returns ``path``.

    The payload is serialised before anything is written, so a value JSON cannot hold (NaN, an
    object) fails without touching the disk.
    """
    data = json_bytes(payload)

    def write(tmp: str) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    return atomic_write(path, write, force=force, option=option)


def read_text(path: str | os.PathLike, what: str) -> str:
    """The whole of a UTF-8 text file; a missing, binary or non-UTF-8 file is a ValueError naming it.

    A byte-order mark is dropped (it would otherwise become part of the first line's text).
    """
    path = os.fspath(path)
    if not path.strip():
        raise ValueError(f"The {what} file name is empty; give a file.")
    if os.path.isdir(path):
        raise ValueError(f"The {what} file {path} is a folder; give a text file.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The {what} file {path} does not exist.")
    with open(path, "rb") as f:
        data = f.read()
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise ValueError(f"The {what} file {path} is not a text file: it holds binary data (a NUL byte on line "
                         f"{line}). Give UTF-8 text, one sequence per line, or .jsonl.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"The {what} file {path} is not UTF-8 text (byte {err.start}, line {line}: "
                         f"{data[err.start:err.start + 1]!r}); is it a binary file? Give UTF-8 text.") from None
