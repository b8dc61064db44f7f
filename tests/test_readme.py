"""The README's examples run: its Python API blocks, and its command lines parse."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import requires_real_data

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def _toolkit_commands() -> list[list[str]]:
    """Every ``toolkit ...`` command in the README's bash blocks, as argv after ``toolkit``."""
    commands = []
    for block in _blocks(README.read_text(), "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";>|&")
            lexer.whitespace_split = True
            words: list[str] = []
            for word in [*lexer, ";"]:
                if word and set(word) <= set(";>|&"):  # the end of a command
                    if words[:1] == ["toolkit"]:
                        commands.append(words[1:])
                    words = [] if word != ">" else ["(redirected)"]
                else:
                    words.append(word)
    return commands


def test_the_readme_has_command_lines_to_check() -> None:
    commands = _toolkit_commands()
    assert {c[0] for c in commands} == {"train", "evaluate", "export", "verify", "bench"}


def _parse(argv: list[str]) -> object:
    from toolkit.cli import _bool_flags, _check_repeated_lists, build_parser

    argv = _bool_flags(argv)
    _check_repeated_lists(argv[0], argv)
    return build_parser(only=argv[0]).parse_args(argv)


@pytest.mark.parametrize("argv", _toolkit_commands(), ids=" ".join)
def test_readme_command_lines_parse(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Each documented command line is accepted by the parser (nothing is run)."""
    monkeypatch.chdir(tmp_path)
    if "--config" in argv:  # the README makes it with --print_config first
        with pytest.raises(SystemExit) as printed:
            _parse([argv[0], "--print_config"])
        assert printed.value.code == 0
        config = argv[argv.index("--config") + 1]
        Path(config).write_text(capsys.readouterr().out)
    if "--print_config" in argv:  # prints the config and exits 0
        with pytest.raises(SystemExit) as printed:
            _parse(argv)
        assert printed.value.code == 0 and "max_epochs:" in capsys.readouterr().out
        return
    assert _parse(argv).command == argv[0]


@requires_real_data
def test_readme_python_api_runs(tmp_path: Path) -> None:
    """The Python API section, run as written in a fresh folder (trains 1 epoch)."""
    code = "\n".join(_blocks(_section("Python API"), "python"))
    assert "train(" in code and "verify(" in code
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "True" in done.stdout  # report.passed
    assert (tmp_path / "runs" / "api" / "model.ckpt").is_file()
    assert {p.name for p in (tmp_path / "exports" / "api").iterdir()} >= {"onnx", "torchscript"}


@pytest.mark.parametrize("run", ["", "../toolkit", "a/b", ".", ".."])
def test_make_clean_removes_only_a_named_run(run: str) -> None:
    # `make clean RUN=../toolkit` once ran rm -rf "runs/../toolkit": the package itself.
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        ["make", "-n", "-C", str(root), "clean", f"RUN={run}"], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "rm -rf" not in proc.stdout
    assert "RUN" in proc.stderr


def test_make_clean_names_the_run_folders() -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        ["make", "-n", "-C", str(root), "clean", "RUN=x"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and 'rm -rf "runs/x" "exports/x"' in proc.stdout
