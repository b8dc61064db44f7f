"""Render report rows (plain dicts) as a rich table or a Markdown table.

Reports are data first: ``parity`` and ``bench`` build lists of row dicts from their
dataclasses, then describe the columns once; the terminal table and the Markdown file
are both rendered from the same rows and columns.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

#: Shown for a missing value (None) or a value a row could not measure.
MISSING = "–"


def format_number(value: Any, spec: str = ".3g") -> str:
    """Format a number with ``spec``; None gives :data:`MISSING`, NaN/Inf print as such."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int | float):
        return format(value, spec)
    return str(value)


def number(spec: str = ".3g", scale: float = 1.0, suffix: str = "") -> Callable[[Any], str]:
    """A cell formatter: ``value * scale`` formatted with ``spec``, then ``suffix``."""

    def fmt(value: Any) -> str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return format_number(value * scale if scale != 1 else value, spec) + suffix
        return format_number(value, spec)

    return fmt


@dataclasses.dataclass(frozen=True)
class Column:
    """One column: the row key it shows, its header, a cell formatter and alignment."""

    key: str
    header: str
    fmt: Callable[[Any], str] = format_number
    justify: str = "right"

    def cell(self, row: dict[str, Any]) -> str:
        """The formatted cell of ``row`` (missing keys give :data:`MISSING`)."""
        value = row.get(self.key)
        return MISSING if value is None else self.fmt(value)


def cells(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> list[list[str]]:
    """Every row's formatted cells, in column order."""
    return [[column.cell(row) for column in columns] for row in rows]


def rich_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[Column],
    title: str | None = None,
    row_style: Callable[[dict[str, Any]], str | None] | None = None,
) -> Any:
    """A ``rich.table.Table`` of ``rows``; ``row_style(row)`` may colour a row."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column.header, justify=column.justify, overflow="fold")  # type: ignore[arg-type]
    for row, row_cells in zip(rows, cells(rows, columns), strict=True):
        # Text, not str: cells like "onnx[onnxruntime-iobinding]" are not rich markup.
        table.add_row(*map(Text, row_cells), style=row_style(row) if row_style else None)
    return table


#: Width of a table written to a log file or pipe: wide enough that no column is cut.
LOG_WIDTH = 220


def table_width(file: Any = None) -> int | None:
    """Width for a table printed to ``file``: the terminal's (None: rich finds it), else
    :data:`LOG_WIDTH`, so that a log keeps every column whole (``$COLUMNS`` as narrow as a
    terminal would fold the cells of these wide tables into unreadable slivers)."""
    stream = file or sys.stdout
    return None if getattr(stream, "isatty", lambda: False)() else LOG_WIDTH


def print_table(table: Any, file: Any = None, width: int | None = None) -> None:
    """Print a rich renderable to ``file`` (stdout by default)."""
    from rich.console import Console

    Console(file=file, width=width, soft_wrap=False).print(table)


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (right-aligned unless ``justify``)."""
    align = {"left": ":---", "center": ":---:"}
    lines = [
        "| " + " | ".join(_md_escape(c.header) for c in columns) + " |",
        "| " + " | ".join(align.get(c.justify, "---:") for c in columns) + " |",
    ]
    lines += ["| " + " | ".join(map(_md_escape, r)) + " |" for r in cells(rows, columns)]
    return "\n".join(lines) + "\n"
