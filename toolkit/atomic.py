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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from toolkit.errors import OutputError, OutputExistsError, raise_if_stopped


def leftover_name(path: Path, kind: str = "partial") -> Path:
    """``.<name>.<pid>.<kind>`` beside ``path``: the hidden name of an output being written
    (``partial``) or replaced (``old``), which :func:`clean_stale_partials` recognises."""
    return path.with_name(f".{path.name}.{os.getpid()}.{kind}")


def output_error(path: Path, exc: OSError) -> OutputError:
    """Map an OSError raised while writing ``path`` to a one-line user error."""
    reason = {
        errno.ENOSPC: "no space left on the device",
        errno.EACCES: "permission denied",
        errno.EROFS: "read-only file system",
        errno.EDQUOT: "disk quota exceeded",
    }.get(exc.errno or -1, exc.strerror or str(exc))
    return OutputError(f"cannot write {path}: {reason}; earlier outputs were left as they were")


def is_utf8_path(path: str | Path) -> bool:
    """Whether ``path``, made absolute, is valid UTF-8.

    Linux allows any bytes in a file name, but torch's and onnx's C++ file writers and the
    UTF-8 reports do not: torch.export aborted the whole process on such an output path.
    """
    try:
        str(Path(path).absolute()).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escaped_path(path: str | Path) -> str:
    """``path`` for a message, with bytes that are not UTF-8 escaped (``\\xff``)."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def ensure_writable_dir(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check, by creating a file, that it is writable."""
    folder = Path(folder)
    if not is_utf8_path(folder):
        shown = escaped_path(folder.absolute())
        raise OutputError(f"cannot write {shown}: the path is not valid UTF-8")
    if os.path.lexists(folder) and not folder.is_dir():
        raise OutputError(f"cannot write {folder}: it is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A real probe: os.access() says yes to root even on read-only folders.
        fd, probe = tempfile.mkstemp(prefix=".toolkit-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise output_error(folder, exc) from None
    return folder


@contextlib.contextmanager
def writable_dir(folder: str | Path) -> Iterator[Path]:
    """:func:`ensure_writable_dir` for a block of work that fills ``folder``.

    If the block fails, the folders this call created are removed again while they are
    empty, so a failed command leaves no empty output folders behind.
    """
    folder = Path(folder)
    created = []
    missing = folder.absolute()
    while not os.path.lexists(missing):
        created.append(missing)  # deepest first
        missing = missing.parent
    try:
        yield ensure_writable_dir(folder)
    except BaseException:
        for path in created:
            try:
                path.rmdir()
            except OSError:
                break  # not empty (something else wrote there) or already gone
        raise


def check_writable_dir(folder: str | Path) -> Path:
    """Check that ``folder`` could be written, creating nothing.

    An existing folder gets the write probe of :func:`ensure_writable_dir`; a missing one
    is checked in the nearest existing folder above it, where it would be created.
    """
    folder = Path(folder)
    existing = folder.absolute()
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write {folder}: {existing} is not a folder")
    ensure_writable_dir(existing)
    return folder


def check_new(path: str | Path, overwrite: bool) -> Path:
    """Raise if ``path`` exists (a dangling symlink too) and ``overwrite`` is False."""
    path = Path(path)
    if os.path.lexists(path) and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it to ``path`` if the block succeeds.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = check_new(path, overwrite)
    ensure_writable_dir(path.parent)
    tmp = leftover_name(path)
    try:
        yield tmp
        raise_if_stopped()
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise output_error(path, exc) from None
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Temporary siblings for a set of outputs, renamed into place once all are written.

    The block writes every temporary file directly (:func:`write_plain`). Only when it
    succeeds and no final name is a folder are they renamed, one right after the other: a
    report's ``.json``, ``.md`` and ``.png`` are not replaced one by one up to the first
    failure. On any failure every temporary file is removed and the earlier outputs stay
    as they were.
    """
    finals = [Path(p) for p in paths]
    for folder in dict.fromkeys(p.parent for p in finals):
        ensure_writable_dir(folder)
    temporary = [leftover_name(p) for p in finals]
    try:
        yield temporary
        raise_if_stopped()
        for final in finals:
            if final.is_dir() and not final.is_symlink():
                raise IsADirectoryError(errno.EISDIR, "it is a folder", str(final))
        for tmp, final in zip(temporary, finals, strict=True):
            os.replace(tmp, final)
    except OSError as exc:
        for tmp in temporary:
            _remove(tmp)
        # Name the output the error is about (its final name, never the temporary one).
        named = {str(t): f for t, f in zip(temporary, finals, strict=True)}
        failed = named.get(str(exc.filename), Path(exc.filename) if exc.filename else None)
        where = failed if failed in finals else finals[0].parent
        raise output_error(where, exc) from None
    except BaseException:
        for tmp in temporary:
            _remove(tmp)
        raise


def write_plain(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` and fsync it; for the temporary names of
    :func:`atomic_paths`, which is what makes the result atomic."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def write_text(path: str | Path, text: str, overwrite: bool = True) -> Path:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path, overwrite) as tmp:
        write_plain(tmp, text)
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
    to ``<name>`` if nothing took its place, else removed. A ``.publish.<pid>.journal``
    (a multi-folder publish killed during its renames) is finished first: its staged
    folders are renamed into place (see :func:`publish_dirs`). Only names exactly of the form
    toolkit writes count: ``<name>`` not hidden, ``<pid>`` a possible process id, and a
    ``.partial`` no symlink. Any other name, and the outputs of processes still running,
    are left alone; an odd name never raises. Returns what was removed or restored.
    """
    import re

    folder = Path(folder)
    touched: list[Path] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:  # no folder, or not readable: nothing to tidy
        return touched
    pattern = re.compile(r"\.([^.].*)\.([1-9][0-9]{0,9})\.(partial|old)", re.DOTALL)
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        pid_max = 4_194_304  # the largest pid_max Linux allows
    journal_pattern = re.compile(r"\.publish\.([1-9][0-9]{0,9})\.journal")
    for entry in entries:
        match = journal_pattern.fullmatch(entry.name)
        if match is not None and not entry.is_symlink():
            pid = int(match.group(1))
            if pid <= pid_max and pid != os.getpid() and not _pid_alive(pid):
                touched += _finish_publish(folder, entry.name, pid)
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return touched
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        stem, pid_text, kind = match.groups()
        pid = int(pid_text)
        leftover, final = folder / entry.name, folder / stem
        try:
            if kind == "partial" and entry.is_symlink():
                continue  # toolkit stages files and folders only (an .old may be a link)
            if pid > pid_max or pid == os.getpid() or _pid_alive(pid):
                continue  # no process could have written it, or its process still runs
            if kind == "old" and not os.path.lexists(final):
                os.rename(leftover, final)
            else:
                _remove(leftover)
        except OSError:  # gone meanwhile (another process tidied up), or not ours to touch
            continue
        if not os.path.lexists(leftover):
            touched.append(leftover)
    return touched


def _journal_path(folder: Path, pid: int | None = None) -> Path:
    return folder / f".publish.{os.getpid() if pid is None else pid}.journal"


def _write_journal(moves: Sequence[tuple[Path, Path]]) -> Path | None:
    """Record a multi-folder publish before its first rename (see :func:`publish_dirs`).

    Only for the layout toolkit stages in: every ``final`` in one folder, each staged as
    ``leftover_name(final)``. Written in place (not atomically): a torn journal means the
    renames had not begun, and recovery then ignores it.
    """
    folder = moves[0][1].parent
    if len(moves) < 2 or any(
        final.parent != folder or staging != leftover_name(final) for staging, final in moves
    ):
        return None
    journal = _journal_path(folder)
    with open(journal, "w", encoding="utf-8") as f:  # one of ours: a dead earlier pid
        json.dump([final.name for _, final in moves], f)
        f.flush()
        os.fsync(f.fileno())
    return journal


def _finish_publish(folder: Path, journal_name: str, pid: int) -> list[Path]:
    """Complete the publish of a process killed during its renames (roll forward).

    Every staged folder the journal names was complete before the journal was written, so
    each one still staged is renamed into place; what it replaces is moved aside as
    ``.old``, which the caller then removes. Returns the journal if it was removed.
    """
    journal = folder / journal_name
    try:
        names = json.loads(journal.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        names = None  # torn: the process died while writing it, before any rename
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        for name in names:
            final = folder / name
            if Path(name).name != name or name.startswith("."):
                continue  # not a name toolkit writes
            staging = folder / f".{name}.{pid}.partial"
            old = folder / f".{name}.{pid}.old"
            try:
                if not staging.is_dir() or staging.is_symlink():
                    continue  # already placed
                if os.path.lexists(final):
                    if os.path.lexists(old):
                        continue  # not the state a publish leaves; the caller tidies up
                    os.rename(final, old)
                os.rename(staging, final)
            except OSError:
                continue
    with contextlib.suppress(OSError):
        journal.unlink()
    return [] if os.path.lexists(journal) else [journal]


def publish_dir(staging: Path, final: Path, overwrite: bool) -> None:
    """Rename the complete folder ``staging`` to ``final``, replacing it only if allowed.

    Replacing takes two renames; a kill between them leaves the old folder as
    ``.<name>.<pid>.old``, which :func:`clean_stale_partials` moves back. ``final`` is
    never a half-written folder, and what it replaced (a folder, a file or a symlink) is
    removed afterwards, leaving no ``.old`` behind.
    """
    publish_dirs([(staging, final)], overwrite)


def publish_dirs(moves: Sequence[tuple[Path, Path]], overwrite: bool) -> None:
    """Rename each complete folder ``staging`` to its ``final``: all of them, or none.

    Every ``final`` is checked first (:class:`OutputExistsError` without ``overwrite``).
    Existing ones are moved aside to ``.<name>.<pid>.old``, the staged folders are renamed
    into place, and only then are the old ones removed. If a rename fails, the renames done
    so far are undone (the old outputs come back, the staged folders stay staged) and the
    ``OSError`` is raised.

    Before the first rename of several folders staged as toolkit stages them (one parent
    folder, ``leftover_name(final)``), a journal ``.publish.<pid>.journal`` names them. A
    process killed during the renames leaves it, and :func:`clean_stale_partials` then
    finishes the publish: every output is the new one, never a mix of new and old.
    """
    moves = [(Path(staging), Path(final)) for staging, final in moves]
    for _, final in moves:
        check_new(final, overwrite)
    raise_if_stopped()
    aside: list[tuple[Path, Path]] = []  # (final, old)
    placed: list[tuple[Path, Path]] = []  # (staging, final)
    try:
        journal = _write_journal(moves) if moves else None
    except OSError as exc:
        raise output_error(_journal_path(moves[0][1].parent), exc) from None
    try:
        for _, final in moves:
            if os.path.lexists(final):  # a dangling symlink too
                old = leftover_name(final, "old")
                os.rename(final, old)
                aside.append((final, old))
        for staging, final in moves:
            os.rename(staging, final)
            placed.append((staging, final))
    except BaseException:
        if journal is not None:  # this publish is undone, not to be finished later
            with contextlib.suppress(OSError):
                journal.unlink()
        for staging, final in reversed(placed):
            with contextlib.suppress(OSError):
                os.rename(final, staging)
        for final, old in reversed(aside):
            with contextlib.suppress(OSError):
                os.rename(old, final)
        raise
    if journal is not None:
        with contextlib.suppress(OSError):
            journal.unlink()
    for _, old in aside:
        _remove(old)  # a file or symlink as well as a folder
