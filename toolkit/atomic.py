"""Atomic outputs: write under a temporary name, then rename into place.

A process killed mid-write leaves at most a hidden ``.*.partial`` file, never a
half-written file under the final name, and earlier outputs stay intact.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from toolkit.errors import OutputError, OutputExistsError


def _partial_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def output_error(path: Path, exc: OSError) -> OutputError:
    """Map an OSError raised while writing ``path`` to a one-line user error."""
    reason = {
        errno.ENOSPC: "no space left on the device",
        errno.EACCES: "permission denied",
        errno.EROFS: "read-only file system",
        errno.EDQUOT: "disk quota exceeded",
    }.get(exc.errno or -1, exc.strerror or str(exc))
    return OutputError(f"cannot write {path}: {reason}; earlier outputs were left as they were")


def ensure_writable_dir(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check, by creating a file, that it is writable."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A real probe: os.access() says yes to root even on read-only folders.
        fd, probe = tempfile.mkstemp(prefix=".toolkit-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise output_error(folder, exc) from None
    return folder


def check_new(path: str | Path, overwrite: bool) -> Path:
    """Raise if ``path`` exists and ``overwrite`` is False."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it to ``path`` if the block succeeds.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = check_new(path, overwrite)
    ensure_writable_dir(path.parent)
    tmp = _partial_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise output_error(path, exc) from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def write_text(path: str | Path, text: str, overwrite: bool = True) -> Path:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path, overwrite) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def write_json(path: str | Path, data: Any, overwrite: bool = True) -> Path:
    """Atomically write ``data`` as indented JSON."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n", overwrite)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_partials(folder: str | Path) -> list[Path]:
    """Tidy up after killed processes: remove their ``.<name>.<pid>.partial`` outputs.

    A ``.<name>.<pid>.old`` (an output being replaced when the process died) is moved back
    to ``<name>`` if nothing took its place, else removed. Files of live processes are
    left alone. Returns what was removed or restored.
    """
    folder = Path(folder)
    touched: list[Path] = []
    if not folder.is_dir():
        return touched
    for leftover in [*folder.glob(".*.partial"), *folder.glob(".*.old")]:
        stem, pid, _ = leftover.name[1:].rsplit(".", 2)
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        final = folder / stem
        if leftover.suffix == ".old" and not final.exists():
            os.replace(leftover, final)
        else:
            _remove(leftover)
        touched.append(leftover)
    return touched


def publish_dir(staging: Path, final: Path, overwrite: bool) -> None:
    """Rename the complete folder ``staging`` to ``final``, replacing it only if allowed.

    Replacing takes two renames; a kill between them leaves the old folder as
    ``.<name>.<pid>.old``, which :func:`clean_stale_partials` moves back. ``final`` is
    never a half-written folder.
    """
    check_new(final, overwrite)
    if not final.exists():
        os.rename(staging, final)
        return
    old = final.with_name(f".{final.name}.{os.getpid()}.old")
    os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)
