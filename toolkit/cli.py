"""``toolkit`` command line: maps command names to library functions (jsonargparse).

Every command is a typed, documented library function; ``--config file.yaml`` and
``--print_config`` work for each, as in LightningCLI. User errors print one line on stderr
and exit non-zero (2 for usage, 1 for failed checks); ``--debug`` shows the traceback.
Ctrl-C exits 130 (``toolkit: interrupted``) and SIGTERM 143 (``toolkit: terminated``),
without publishing a half-made output.
"""

from __future__ import annotations

import argparse
import atexit
import inspect
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import Any

from toolkit.atomic import escaped_path, is_utf8_path
from toolkit.errors import (
    TerminatedError,
    ToolkitError,
    UsageError,
    raise_if_stopped,
    request_stop,
    stop_behind,
    stop_requested,
)

#: command name → "module:function", imported when the parser is built.
COMMANDS: dict[str, str] = {
    "train": "toolkit.train:train",
    "evaluate": "toolkit.train:evaluate",
    "export": "toolkit.export:export_command",
    "bench": "toolkit.bench:bench_command",
    "verify": "toolkit.parity:verify_command",
}
#: Options that name a file or folder: an empty string would quietly mean "." or the default.
_PATH_OPTIONS = (
    "checkpoint", "weights", "output_dir", "exports", "data_dir", "compare", "inputs",
)  # fmt: skip
#: Options that take several values in one (``--format onnx,torchscript``): given twice, the
#: second would silently replace the first, where a user may expect both.
_LIST_OPTIONS = {"export": ("format",), "bench": ("runtimes", "batch_sizes", "device")}
#: What ``train --help`` says above Lightning's own option texts.
_TRAINER_HELP = (
    "Any lightning.Trainer option. The texts below are Lightning's; toolkit's defaults "
    "differ: deterministic true; enable_checkpointing false (toolkit writes model.ckpt "
    "itself); logger: a CSVLogger in the run folder; enable_progress_bar and "
    "enable_model_summary true only on a terminal (a bar redrawn at most every 0.1 s; "
    "off a terminal, a line per epoch); "
    "profiler: one that records nothing."
)
#: Trainer options that ``train`` sets itself or takes as its own arguments.
_TRAINER_SKIP = {"max_epochs", "default_root_dir", "self"}


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    request_stop()  # for raise_if_stopped, should a library swallow the exception
    _quiet_worker_deaths()
    raise TerminatedError("terminated")


def _quiet_worker_deaths() -> None:
    """Stop torch's SIGCHLD handler from raising: the process is stopping.

    SIGTERM sent to a process group stops DataLoader workers too, and torch's handler
    raises ``RuntimeError: DataLoader worker ... is killed by signal`` for each death it
    sees, at any point of the clean-up that follows, even inside the code that was
    turning the first such error into "terminated" (exit 1 and a traceback, seen in CI).
    """
    with suppress(ValueError, OSError, AttributeError):  # not the main thread, ...
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`TerminatedError` for the block, so that partial outputs are
    cleaned up as for any error; the previous handler is restored after.

    Lightning chains its own SIGTERM handler before this one while it trains.
    """
    request_stop(False)
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        request_stop(False)


def _function(spec: str) -> Callable[..., Any]:
    import importlib

    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("toolkit")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "(not installed)"


def _summary(fn: Callable[..., Any]) -> str:
    return (inspect.getdoc(fn) or "").split("\n")[0]


def build_parser(only: str | None = None) -> Any:
    """The jsonargparse parser with one subcommand per entry of :data:`COMMANDS`.

    Args:
        only: Build just this subcommand (imports only its module; faster start-up).
    """
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="toolkit",
        description="Train, reload, export, verify and benchmark Lightning classifiers.",
        exit_on_error=False,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--version", action="version", version=f"toolkit {_version()}")
    subcommands = parser.add_subcommands(dest="command")
    for name, spec in COMMANDS.items():
        if only is not None and name != only:
            continue
        fn = _function(spec)
        sub = ArgumentParser(exit_on_error=False, description=_summary(fn))
        sub.add_argument("--config", action=ActionConfigFile, help="YAML/JSON config file")
        skip = {"trainer"} if name == "train" else set()
        sub.add_function_arguments(fn, skip=skip, fail_untyped=False)
        if name == "train":
            import lightning as L

            sub.add_class_arguments(
                L.Trainer, "trainer", skip=_TRAINER_SKIP, instantiate=False, fail_untyped=False
            )
            group = getattr(sub, "groups", {}).get("trainer")
            if group is not None:  # the texts below are Lightning's, so are their defaults
                group.description = _TRAINER_HELP
        _drop_append_forms(sub, _LIST_OPTIONS.get(name, ()))
        subcommands.add_subcommand(name, sub, help=_summary(fn))
    return parser


def _drop_append_forms(parser: Any, names: tuple[str, ...]) -> None:
    """Remove jsonargparse's ``--name+`` (append to the default) from these list options.

    ``--batch_sizes+ 32`` would sweep 1, 8, 64, 256 and 32, and ``--format+ onnx`` would
    add onnx to ``all``; each list option takes all its values in one (``--format
    onnx,torchscript``), so the append form is neither offered in ``--help`` nor accepted.
    """
    for name in names:
        action = parser._option_string_actions.pop(f"--{name}+", None)
        if action is not None:
            action.option_strings = [o for o in action.option_strings if o != f"--{name}+"]


def _trainer_options(values: dict[str, Any]) -> dict[str, Any]:
    """Trainer options the user set: those differing from ``lightning.Trainer``'s defaults."""
    import lightning as L

    defaults = {
        p.name: p.default for p in inspect.signature(L.Trainer.__init__).parameters.values()
    }
    return {k: v for k, v in values.items() if k in defaults and v != defaults[k]}


def _instantiate(parser: Any, cfg: Any) -> Any:
    """Build the objects named by class paths, e.g. ``--trainer.callbacks <class>``."""
    build = getattr(parser, "instantiate", None) or parser.instantiate_classes  # jsonargparse<4.49
    try:
        return build(cfg)
    except Exception as exc:  # the user's class or its arguments; nothing was written yet
        message = _one_line(str(exc))
        raise UsageError(f"cannot build a class given in the options: {message}") from None


def _call(parser: Any, cfg: Any) -> Any:
    command = cfg.command
    kwargs = _instantiate(parser, cfg)[command].as_dict()
    for key in ("config", "__path__", "print_config"):
        kwargs.pop(key, None)
    for name in (*_PATH_OPTIONS, "run_name"):
        value = kwargs.get(name)
        if isinstance(value, str) and not is_utf8_path(value):  # torch.export aborts on it
            shown = escaped_path(value if name == "run_name" else os.path.abspath(value))
            raise UsageError(
                f"--{name} is not valid UTF-8 ({shown}); toolkit needs UTF-8 paths (its "
                "reports, and some of torch's and onnx's file functions, take no others): "
                "rename the file or folder"
            )
    for name in _PATH_OPTIONS:
        if isinstance(kwargs.get(name), str) and not kwargs[name].strip():
            raise UsageError(f"--{name} must not be empty; give a path or leave it out")
        if isinstance(kwargs.get(name), str) and kwargs[name].startswith("~"):
            # A shell expands ~ only in a word of its own; in a config file or after
            # "--data_dir=" it reached toolkit as a folder named "~".
            kwargs[name] = os.path.expanduser(kwargs[name])
    if command == "train":
        trainer = kwargs.get("trainer") or {}
        if not isinstance(trainer, dict):  # e.g. "trainer: 5" in a config file
            raise UsageError(
                f"trainer must be a mapping of lightning.Trainer options, got {trainer!r}"
            )
        kwargs["trainer"] = _trainer_options(trainer)
    result = _function(COMMANDS[command])(**kwargs)
    if command == "train" and getattr(result, "run_dir", None):
        # Imported here, not for every command: `import lightning` takes seconds, and
        # export and bench do not need it.
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        # Under DDP every process runs the command; the results are printed once.
        if rank_zero_only.rank == 0:
            from toolkit.train import format_accuracies

            print(f"run folder: {result.run_dir}")
            print(format_accuracies(result.train_acc, result.val_acc, result.test_acc))
    return result


def _bool_flags(argv: list[str]) -> list[str]:
    """Let ``--overwrite`` stand for ``--overwrite true`` for the command's bool options."""
    command = next((a for a in argv if a in COMMANDS), None)
    if command is None:
        return argv
    names = {
        f"--{p.name}"
        for p in inspect.signature(_function(COMMANDS[command])).parameters.values()
        if p.annotation in (bool, "bool")
    }
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        following = argv[i + 1] if i + 1 < len(argv) else None
        if arg in names and (following is None or following.startswith("-")):
            out.append("true")
    return out


def _check_repeated_lists(command: str | None, argv: list[str]) -> None:
    """Refuse a list option given more than once (``--format onnx --format torchscript``)."""
    lists = _LIST_OPTIONS.get(command or "", ())
    seen: set[str] = set()
    for arg in argv:
        name = arg.split("=", 1)[0][2:] if arg.startswith("--") else None
        if name and name.endswith("+") and name[:-1] in lists:
            raise UsageError(
                f"--{name} is not an option: --{name[:-1]} takes all its values in one, "
                f"e.g. --{name[:-1]} {_LIST_EXAMPLES[name[:-1]]}"
            )
        if name not in lists:
            continue
        if name in seen:
            raise UsageError(
                f"--{name} was given more than once; list all values in one, "
                f"e.g. --{name} {_LIST_EXAMPLES[name]}"
            )
        seen.add(name)


_LIST_EXAMPLES = {
    "format": "onnx,torchscript",
    "runtimes": "eager,onnxruntime",
    "batch_sizes": "1,64",
    "device": "cpu,cuda",
}


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (130 after Ctrl-C, 143 after SIGTERM)."""
    with _sigterm_raises():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    debug = False
    try:  # everything, argument handling included: Ctrl-C may come at any moment
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = "--debug" in argv or os.environ.get("TOOLKIT_DEBUG") == "1"
        argv = _bool_flags([arg for arg in argv if arg != "--debug"])
        if not debug:
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
        command = next((a for a in argv if a in COMMANDS), None)
        _check_repeated_lists(command, argv)
        if command in ("export", "verify", "bench") and any(
            a.split("=", 1)[0] == "--weights" for a in argv
        ):
            raise UsageError(
                f"{command} takes every weights file (.ckpt, .pt or .safetensors) as "
                "--checkpoint; --weights is evaluate's other name for it"
            )
        parser = build_parser(only=command)
        try:
            cfg = parser.parse_args(argv)
        except UnicodeDecodeError:  # --config given a binary file (a checkpoint, an image)
            raise UsageError(
                "--config must name a YAML or JSON text file; the file given is not text"
            ) from None
        except argparse.ArgumentError as exc:
            usage = f"toolkit {command} --help" if command else "toolkit --help"
            message = _one_line(str(exc))
            if command:  # jsonargparse names required options "<command>.<option>"
                message = message.replace(f" {command}.", " --")
            print(f"toolkit: error: {message} (see {usage})", file=sys.stderr)
            return 2
        if cfg.get("command") is None:
            parser.print_help()
            return 2
        _call(parser, cfg)
        raise_if_stopped()  # SIGTERM came, but a library swallowed its exception
    except TerminatedError as exc:
        _say_once("toolkit: terminated")
        return exc.exit_code
    except ToolkitError as exc:
        if debug:
            raise
        _say_once(f"toolkit: error: {_one_line(str(exc))}")
        return exc.exit_code
    except KeyboardInterrupt:
        _say_once("toolkit: interrupted")
        return 130
    except Exception as exc:  # raised while a stop was being handled: the stop wins
        stop = _stop_behind(exc)
        if stop is None or debug:
            raise
        _say_once("toolkit: terminated" if stop == 143 else "toolkit: interrupted")
        return stop
    return 0


def _stop_behind(exc: BaseException) -> int | None:
    """143 if SIGTERM came (recorded, or an exception raised while handling it), 130 if
    ``exc`` was raised while handling Ctrl-C, else None."""
    return 143 if stop_requested() else stop_behind(exc)


#: Where launchers (Lightning's DDP, torchrun, SLURM, LSF) put a process's rank on its node.
_LOCAL_RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID", "JSM_NAMESPACE_LOCAL_RANK")


def _say_once(line: str) -> None:
    """Print ``line`` on stderr from the first process of each machine only.

    Under ``--trainer.strategy ddp`` every device's process runs this command, and a bad
    option or Ctrl-C reaches them all: the line was printed once per process. The first
    process of each node still prints, so an error met on one node only (its data folder
    missing) is seen; the other processes exit with the same code, and ``--debug`` shows
    every process's error.
    """
    for var in _LOCAL_RANK_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            if value != "0":
                return
            break
    print(line, file=sys.stderr)


def _exit_at_once(code: int) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):
                stream.flush()
        os._exit(code)

    return handler


def entry_point() -> None:
    """Console-script entry point.

    Once the command has ended (its outputs published, its result printed), the exit
    handlers run with Ctrl-C and SIGTERM ending the process at once with the command's own
    exit status, and the process then exits without tearing down its modules. Python
    restores the default signal handlers before that teardown, which takes about a second
    with torch loaded: a signal then killed a finished command (exit 130 or 143, or -15),
    as if it had been stopped before publishing.
    """
    code = main()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_at_once(code))
    atexit._run_exitfuncs()  # logging.shutdown, multiprocessing's children, finalizers
    try:
        sys.stdout.flush()  # what Python's own exit would report (a full disk, a closed pipe)
    except (OSError, ValueError) as exc:
        with suppress(Exception):
            print(f"toolkit: error: cannot write the output: {exc}", file=sys.stderr)
        code = code or 120  # Python's status when it cannot flush stdout at exit
    _exit_at_once(code)(0, None)
