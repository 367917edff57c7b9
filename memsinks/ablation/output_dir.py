"""Where an export is written: a temporary folder beside ``--out``, renamed onto it only when complete and checked.

Rules, each for a way a user could lose files:

* ``--out`` never overlaps the input checkpoint or an input file of the run.
* Without ``force`` the export is placed only onto a missing or empty ``--out``. The check at
  the start is repeated by the final rename itself: ``rename(2)`` of a folder onto a non-empty
  folder fails, so of two runs racing to the same ``--out`` the second fails and says so
  instead of replacing the first one's export.
* ``force`` replaces only a folder that holds ``EXPORT_MARKER``, which every export writes: an
  earlier export, never a folder of other files. The old folder is moved aside and deleted
  only after the new one is in place.
* The temporary folder ``.<out>.partial-*`` holds ``PARTIAL_MARKER`` (owner process, host,
  start time) while it is being written. A run killed outright (SIGKILL) cannot remove it;
  the next export to the same ``--out`` removes the partial folders whose owner is gone or
  that are older than ``STALE_AFTER_S``, and names them in a warning. Temporary folders of
  the check in a fresh process (``memsinks-verify-*``) are tagged and cleaned the same way.
* The placed folder gets the permissions of the user's umask, like ``save_pretrained``'s
  folders (a temporary folder is created private, 0700).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from typing import Iterable, Iterator

from memsinks._io import disk_full_error, is_disk_full, user_umask

logger = logging.getLogger("memsinks")

EXPORT_MARKER = "memsinks_export.json"
PARTIAL_MARKER = ".memsinks-partial.json"
VERIFY_PREFIX = "memsinks-verify-"  # temporary folders (in the system's) of the check in a fresh process
STALE_AFTER_S = 24 * 3600  # a partial folder this old is stale even if its owner's process ID was reused


def _resolved(path: str | os.PathLike) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def _within(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def is_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by a memsinks export (it holds ``EXPORT_MARKER``)."""
    return os.path.isfile(os.path.join(os.fspath(path), EXPORT_MARKER))


def write_export_marker(folder: str, kind: str, checkpoint: str) -> None:
    """Tag ``folder`` as a memsinks export (what ``force`` may replace later)."""
    from memsinks._version import __version__

    with open(os.path.join(folder, EXPORT_MARKER), "w", encoding="utf-8") as f:
        json.dump({"memsinks_version": __version__, "kind": kind, "source": os.path.abspath(checkpoint),
                   "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, f, indent=2)
        f.write("\n")


def _not_an_export(out) -> FileExistsError:
    return FileExistsError(
        f"--out {out} is not empty and is not an earlier memsinks export (it has no {EXPORT_MARKER}), so --force "
        "will not delete it. Remove it yourself if you no longer need its files, or choose another --out.")


def check_output_dir(out: str | os.PathLike, checkpoint: str | os.PathLike, force: bool,
                     inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """Refuse an ``out`` that overlaps the input checkpoint or holds an input file, is a file, is not
    writable, is non-empty without ``force``, or is non-empty and not an earlier export."""
    out_r, ckpt_r = _resolved(out), _resolved(checkpoint)
    if _within(out_r, ckpt_r) or _within(ckpt_r, out_r):
        raise ValueError(
            f"--out {out} overlaps the input checkpoint {checkpoint}; memsinks never writes into (or over) its "
            "input. Choose a directory outside it."
        )
    for path in inputs:
        if path and _within(_resolved(path), out_r):
            raise ValueError(f"--out {out} holds the input file {path}; memsinks never writes over its inputs. "
                             "Choose another --out.")
    if os.path.lexists(out) and not os.path.isdir(out):
        raise FileExistsError(f"--out {out} exists and is not a directory.")
    if os.path.isdir(out) and os.listdir(out):
        if not force:
            raise FileExistsError(
                f"--out {out} exists and is not empty. Choose a new directory, or pass --force (force=True) to "
                "replace an earlier memsinks export there once the new model is written and checked."
            )
        if not is_export(out):
            raise _not_an_export(out)
    existing = os.path.dirname(out_r)
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"Cannot write beside --out {out}: {existing} is not writable.")


# ------------------------------------------------------------------------------------ temporary folders
def make_owned_dir(parent: str, prefix: str) -> str:
    """A new private folder ``parent/prefix<pid>-*`` tagged with this process as its owner (see ``clean_stale``).

    The process ID is also in the name, so a folder whose owner was killed before it could write
    the marker is still recognised.
    """
    path = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)
    try:
        with open(os.path.join(path, PARTIAL_MARKER), "w", encoding="utf-8") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, f)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def _owner_gone(info: dict) -> bool:
    if time.time() - float(info.get("started", 0)) > STALE_AFTER_S:
        return True
    if info.get("host") != socket.gethostname():
        return False  # another machine's run on a shared disk: only age tells
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False
    return False


def _owner_of(path: str, suffix: str) -> dict | None:
    """The owner recorded in ``path``'s marker, else (killed before writing it) the process ID in its name."""
    try:
        with open(os.path.join(path, PARTIAL_MARKER), encoding="utf-8") as f:
            info = json.load(f)
        return info if isinstance(info, dict) else None
    except FileNotFoundError:
        pid, dash, _ = suffix.partition("-")
        if not (dash and pid.isdigit()):
            return None  # not a folder of ours
        return {"pid": int(pid), "host": socket.gethostname(), "started": os.stat(path).st_mtime}


def clean_stale(parent: str, prefix: str, what: str) -> list[str]:
    """Remove the folders ``parent/prefix*`` whose owner (``make_owned_dir``) was killed, or that are stale; warn.

    A folder that ``make_owned_dir`` did not make is someone else's and is left alone, as is one
    whose owner still runs.
    """
    removed = []
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return removed
    for name in names:
        path = os.path.join(parent, name)
        if not name.startswith(prefix) or not os.path.isdir(path) or os.path.islink(path):
            continue
        try:
            info = _owner_of(path, name[len(prefix):])
            stale = info is not None and _owner_gone(info)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.warning("memsinks: removed %d %s left by an earlier run that was killed: %s", len(removed), what,
                       ", ".join(removed))
    return removed


def partial_prefix(out: str) -> str:
    return f".{os.path.basename(os.path.abspath(out).rstrip(os.sep))}.partial-"


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, checkpoint: str | os.PathLike, force: bool = False,
                      inputs: Iterable[str | os.PathLike | None] = ()) -> Iterator[str]:
    """Yield a fresh temporary directory beside ``out``; on a clean exit it becomes ``out``.

    On any exception (including KeyboardInterrupt) the temporary directory is deleted and
    ``out`` is left as it was; a full disk becomes one OSError naming ``out``. With ``force``,
    an earlier export at ``out`` is moved aside, replaced, and deleted only after the new one
    is in place.
    """
    check_output_dir(out, checkpoint, force, inputs)
    out = os.path.abspath(os.fspath(out))
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    clean_stale(parent, partial_prefix(out), "partial export folder(s)")
    clean_stale(tempfile.gettempdir(), VERIFY_PREFIX, "temporary check folder(s)")
    tmp = make_owned_dir(parent, partial_prefix(out))
    try:
        yield tmp
        os.remove(os.path.join(tmp, PARTIAL_MARKER))
        os.chmod(tmp, 0o777 & ~user_umask())
        _move_into_place(tmp, out, force)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(err, KeyboardInterrupt) and is_disk_full(err):
            raise disk_full_error(out, err) from err
        raise


def _move_into_place(tmp: str, out: str, force: bool) -> None:
    if force and os.path.isdir(out) and os.listdir(out):
        if not is_export(out):  # checked again: the folder may have changed since the start
            raise _not_an_export(out)
        _replace(tmp, out)
        return
    try:
        os.rename(tmp, out)  # onto a missing name or an empty folder; refused onto a non-empty folder
    except OSError as err:
        if err.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise FileExistsError(
                f"--out {out} appeared while this export ran (another memsinks ablate writing there?). It was left "
                "as it is and this run's export was discarded; choose another --out, or pass --force to replace "
                "an earlier export.") from None
        raise


def _replace(tmp: str, out: str) -> None:
    """Swap ``tmp`` in for the earlier export ``out``; the old folder is deleted only once the new one is placed."""
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        try:
            os.rename(old, out)
        except OSError:
            raise FileExistsError(f"--out {out} changed while this export replaced it; the earlier export is kept "
                                  f"at {old}.") from None
        raise
    shutil.rmtree(old, ignore_errors=True)
