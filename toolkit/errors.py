"""User-facing errors.

Every subclass of :class:`ToolkitError` is a user error: the CLI prints it as one line on
stderr and exits non-zero without a traceback. Any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations


class ToolkitError(Exception):
    """Base class of all user errors. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 2


class UsageError(ToolkitError):
    """The command was called wrongly: bad option, unknown name, bad shape."""

    exit_code = 2


class UnknownNameError(UsageError, KeyError):
    """A registry lookup missed."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(ToolkitError):
    """Data files are missing, truncated or corrupt."""

    exit_code = 1


class CheckpointError(ToolkitError):
    """A checkpoint, state_dict or artifact cannot be read or does not fit the network."""

    exit_code = 1


class UnsafeFileError(CheckpointError):
    """A file would need arbitrary unpickling (code execution) to load."""


class IntegrityError(CheckpointError):
    """An artifact's sha256 does not match its manifest."""


class ExportError(ToolkitError):
    """An export failed or would be wrong."""

    exit_code = 1


class OutputExistsError(UsageError):
    """An output already exists and ``overwrite`` was not given."""


class OutputError(ToolkitError):
    """An output cannot be written (permissions, disk full)."""

    exit_code = 1


class CheckFailedError(ToolkitError):
    """A verification or regression check failed."""

    exit_code = 1


class MissingDependencyError(UsageError):
    """An optional dependency is not installed."""


class RuntimeUnavailableError(UsageError):
    """A runtime cannot run on this machine's device (onnxruntime without its CUDA
    provider): bench and verify skip it there, as a runtime that does not run on a device."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (or its type name), for one-line
    error messages that quote what a library said."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


_stop = {"requested": False}


def request_stop(requested: bool = True) -> None:
    """Record that SIGTERM came (or, with False, forget it: a new command starts)."""
    _stop["requested"] = requested


def stop_behind(exc: BaseException, terminated: tuple[type[BaseException], ...] = ()) -> int | None:
    """The stop that ``exc`` was raised while handling: 143 for SIGTERM
    (:class:`TerminatedError`, or one of ``terminated``), 130 for Ctrl-C, else None.

    When Ctrl-C or SIGTERM reaches the whole process group, DataLoader workers die with it
    and torch raises ``RuntimeError: DataLoader worker ... is killed by signal`` while the
    main process is still handling its own stop: a consequence of the stop, not a fault.
    """
    seen: set[int] = set()
    cause = exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, (TerminatedError, *terminated)):
            return 143
        if isinstance(cause, KeyboardInterrupt):
            return 130
        cause = cause.__context__
    return None


def stop_requested() -> bool:
    """Whether SIGTERM came during this command (see :func:`request_stop`)."""
    return bool(_stop["requested"])


def raise_if_stopped() -> None:
    """Raise :class:`TerminatedError` if SIGTERM came, even if its exception was lost.

    The handler raises at once, but a library can swallow that exception (a handler that
    runs inside a finalizer or a ``torch.compile`` callback is printed as "Exception
    ignored" and dropped): a terminated bench then went on and published its report.
    Everything that publishes an output calls this first.
    """
    if _stop["requested"]:
        raise TerminatedError("terminated")


class TerminatedError(BaseException):
    """The process got SIGTERM. The CLI prints ``toolkit: terminated`` and exits 143
    (128 + SIGTERM, as a shell reports a process killed by it).

    Like ``KeyboardInterrupt`` it is no ``Exception``: the handlers that keep one failing
    runtime or artifact from stopping the others (``except Exception``) must not swallow
    it, or a terminated bench would go on and publish a report.
    """

    exit_code = 143
