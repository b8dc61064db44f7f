"""Render a :class:`~toolkit.bench.BenchReport`: terminal table, Markdown and PNG plot.

Everything here is rendered from the report's data (rows, skipped, verdicts); nothing
is measured here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.report import Column, markdown_table, number, print_table, rich_table, table_width

if TYPE_CHECKING:
    from toolkit.bench import BenchReport, RowChange


def _us(value: Any) -> str:
    if not isinstance(value, int | float):
        return str(value)
    if value >= 1e6:
        return f"{value / 1e6:.3g} s"
    if value >= 1e3:
        return f"{value / 1e3:.3g} ms"
    return f"{value:.3g} us"


def _seconds(value: Any) -> str:
    """A time in seconds in the table's units (``12.3 ms``), like the µs columns beside it."""
    return _us(value * 1e6) if isinstance(value, int | float) else str(value)


def _ratio(row: dict[str, Any]) -> str:
    ratio, ci = row.get("ratio_to_eager"), row.get("ratio_ci")
    if ratio is None:
        return "–"
    text = f"{ratio:.3g}"
    return text + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")


def _spread(row: dict[str, Any]) -> str:
    p50s = row.get("round_p50s_us") or []
    if len(p50s) < 2:
        return "–"
    return f"{max(p50s) / min(p50s) - 1:.0%}" if min(p50s) > 0 else "–"


def table_rows(report: BenchReport) -> list[dict[str, Any]]:
    """One plain dict per row, with the derived cells (label, ratio text, spread)."""
    rows = []
    for row in report.rows:
        data = {**row.__dict__, "label": row.label}
        data["ratio_text"] = _ratio(data)
        data["spread"] = _spread(data)
        data["n_text"] = f"{row.n}" + ("*" if row.below_min_calls else "")
        rows.append(data)
    return rows


def columns() -> list[Column]:
    """The columns of the terminal table and the Markdown table."""
    return [
        Column("label", "runtime", justify="left"),
        Column("device", "device", justify="left"),
        Column("batch", "batch"),
        Column("p50_us", "p50", _us),
        Column("p90_us", "p90", _us),
        Column("p99_us", "p99", _us),
        Column("iqr_us", "IQR", _us),
        Column("spread", "round spread"),
        Column("n_text", "calls"),
        Column("throughput_sps", "samples/s", number(",.0f")),
        Column("ratio_text", "p50 / eager [95% CI]"),
        Column("load_s", "load", _seconds),
        Column("first_call_us", "first call", _us),
        Column("parity", "parity", justify="left"),
    ]


def _row_style(row: dict[str, Any]) -> str | None:
    return {"FAIL": "red", "UNCHECKED": "yellow"}.get(row.get("parity", ""))


def summary_lines(report: BenchReport) -> list[str]:
    """Environment and protocol in a few lines."""
    env, protocol = report.environment, report.protocol
    gpu = f"; GPU {env.get('gpu')} (driver {env.get('driver')})" if env.get("gpu") else ""
    return [
        f"CPU {env.get('cpu_model')} ({env.get('cores')} cores, {env.get('usable_cores')} "
        f"usable){gpu}; torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}",
        f"threads: {protocol.get('threads')} intra-op for every runtime; "
        f"I/O boundary: {protocol.get('io_boundary')}",
        f"protocol: warm-up >= {protocol.get('warmup_calls')} calls and "
        f">= {protocol.get('warmup_time')} s; timed >= {protocol.get('min_calls')} calls and "
        f">= {protocol.get('min_time')} s per row, in {protocol.get('rounds')} interleaved "
        f"rounds; clocks: {', '.join(sorted(set(protocol.get('clocks', {}).values())))}",
        f"parity: {report.parity_source}",
        *_busy_lines(report),
        *_unstable_lines(report),
        *_mixed_clock_lines(report),
    ]


def _busy_lines(report: BenchReport) -> list[str]:
    """A warning when other processes kept the cores busy while this report was timed."""
    from toolkit.bench import busy_phrase

    phrase = busy_phrase(report)
    if phrase is None:
        return []
    return [
        f"warning: {phrase} while timing: these figures are likely slower and noisier than "
        "on an idle machine; rerun when it is idle"
    ]


def _mixed_clock_lines(report: BenchReport) -> list[str]:
    """A warning for each device whose rows were timed on different clocks."""
    lines = []
    for device in report.devices:
        clocks = sorted({row.clock for row in report.rows if row.device == device})
        if len(clocks) > 1:
            lines.append(
                f"warning: rows on {device} were timed on different clocks ({'; '.join(clocks)}): "
                "a ratio between two of them compares the clocks as well as the runtimes"
            )
    return lines


#: A row whose per-round p50s differ by more than this (max/min - 1) is flagged.
UNSTABLE_SPREAD = 0.5


def _unstable_lines(report: BenchReport) -> list[str]:
    spreads = []
    for row in report.rows:
        p50s = row.round_p50s_us or []
        if len(p50s) > 1 and min(p50s) > 0:
            spreads.append((max(p50s) / min(p50s) - 1, row))
    unstable = sorted((item for item in spreads if item[0] > UNSTABLE_SPREAD), key=lambda i: -i[0])
    if not unstable:
        return []
    spread, row = unstable[0]
    return [
        f"warning: {len(unstable)} row(s) changed by more than {UNSTABLE_SPREAD:.0%} between "
        f"rounds (most: {row.label} {row.device} batch {row.batch}, {spread:.0%}): the "
        "machine was busy or its clock changed; rerun on a quiet machine before trusting them"
    ]


def print_report(report: BenchReport, file: Any = None) -> None:
    """Print the table, the skipped runtimes and the verdicts."""
    from rich.console import Console

    # Lines are never hard-wrapped: `grep verdict` on a log gets whole verdicts.
    console = Console(file=file, soft_wrap=True)
    width = table_width(file)
    title = f"toolkit bench: {report.network or 'network'}"
    table = rich_table(table_rows(report), columns(), title, _row_style)
    print_table(table, file=file, width=width)
    for line in summary_lines(report):
        console.print(line, highlight=False, markup=False)
    for skip in report.skipped:
        console.print(f"[yellow]{_escape(skip.text())}[/yellow]", highlight=False)
    for verdict in report.verdicts:
        console.print(f"[bold]verdict[/bold] {_escape(verdict.text)}", highlight=False)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def render_markdown(report: BenchReport) -> str:
    """``bench.md``: summary, one table per device, verdicts, skips."""
    lines = [f"# Benchmark: {report.network or 'network'}", ""]
    lines += [f"- {line}" for line in summary_lines(report)]
    lines += [f"- created {report.created}; checkpoint {report.checkpoint}", ""]
    lines += ["## Verdicts", ""]
    lines += [f"- {v.text}" for v in report.verdicts] or ["- (no rows)"]
    lines.append("")
    rows = table_rows(report)
    for device in report.devices:
        here = [r for r in rows if r["device"] == device]
        if here:
            lines += [f"## {device}", "", markdown_table(here, columns())]
    if any(r.below_min_calls for r in report.rows):
        lines += ["\\* fewer calls than --min_calls: --max_time cut the row short.", ""]
    lines += [
        "Latencies per call; p99 rests on about 1% of the calls. `round spread` is "
        "max/min - 1 of the per-round p50s; the ratio CI is a stratified bootstrap.",
        "",
    ]
    if report.skipped:
        lines += ["## Skipped", ""] + [f"- {s.text()}" for s in report.skipped] + [""]
    return "\n".join(lines)


def save_plot(report: BenchReport, path: str | Path) -> Path:
    """Save ``bench.png`` to ``path``: p50 latency with p90/p99 whiskers, and throughput.
    ``write_outputs`` passes a temporary name and publishes it with the other reports.

    One line per runtime across batch sizes; one pair of panels per device.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = [d for d in report.devices if any(r.device == d for r in report.rows)] or ["cpu"]
    fig, axes = plt.subplots(
        len(devices), 2, figsize=(12, 4.2 * len(devices)), squeeze=False, constrained_layout=True
    )
    for (ax_lat, ax_tput), device in zip(axes, devices, strict=True):
        rows = [r for r in report.rows if r.device == device]
        labels = list(dict.fromkeys(r.label for r in rows))
        for i, label in enumerate(labels):
            mine = sorted((r for r in rows if r.label == label), key=lambda r: r.batch)
            batches = [r.batch * (1 + 0.03 * (i - len(labels) / 2)) for r in mine]
            p50 = [r.p50_us for r in mine]
            line = ax_lat.plot(batches, p50, marker="o", label=label)[0]
            colour = line.get_color()
            ax_lat.errorbar(
                batches, p50, yerr=[[0] * len(mine), [r.p99_us - r.p50_us for r in mine]],
                fmt="none", ecolor=colour, elinewidth=0.8, capsize=2,
            )  # fmt: skip
            ax_lat.errorbar(
                batches, p50, yerr=[[0] * len(mine), [r.p90_us - r.p50_us for r in mine]],
                fmt="none", ecolor=colour, elinewidth=2.5,
            )  # fmt: skip
            ax_tput.plot([r.batch for r in mine], [r.throughput_sps for r in mine], marker="o")
        for ax, ylabel in ((ax_lat, "latency per call (us)"), (ax_tput, "samples/s (batch/p50)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch size")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        ax_lat.set_title(f"{device}: p50 latency (thick whisker p90, thin p99)")
        ax_tput.set_title(f"{device}: throughput")
        if labels:
            ax_lat.legend(fontsize=7)
    try:
        fig.savefig(path, format="png", dpi=110)
    finally:
        plt.close(fig)
    return Path(path)


def change_rows(changes: Sequence[RowChange]) -> list[dict[str, Any]]:
    """Plain dicts for the compare table."""
    out = []
    for c in changes:
        ci = c.ratio_ci
        out.append(
            {
                "label": c.label,
                "device": c.device,
                "batch": c.batch,
                "old": c.old_p50_us,
                "new": c.new_p50_us,
                "change": None if c.ratio is None else f"{c.ratio - 1:+.1%}",
                "ci": None if ci is None else f"[{ci[0] - 1:+.1%}, {ci[1] - 1:+.1%}]",
                "vs_eager": None if c.vs_eager is None else f"{c.vs_eager - 1:+.1%}",
                "vs_eager_ci": None
                if c.vs_eager_ci is None
                else f"[{c.vs_eager_ci[0] - 1:+.1%}, {c.vs_eager_ci[1] - 1:+.1%}]",
                "status": c.status,
            }
        )
    return out


def print_changes(
    changes: Sequence[RowChange], threshold: float, file: Any = None, by: str = "p50"
) -> None:
    """Print the per-row change of p50 (and relative to eager) against an earlier report."""
    cols = [
        Column("label", "runtime", justify="left"),
        Column("device", "device", justify="left"),
        Column("batch", "batch"),
        Column("old", "old p50", _us),
        Column("new", "new p50", _us),
        Column("change", "change"),
        Column("ci", "95% CI"),
        Column("vs_eager", "vs eager"),
        Column("vs_eager_ci", "95% CI"),
        Column("status", "status", justify="left"),
    ]

    styles = {"regressed": "bold red", "improved": "green", "missing": "yellow"}
    judged = "p50" if by == "p50" else "p50 relative to eager's"
    title = (
        f"change of p50 (vs eager: divided by eager's change; regression: {judged} CI lower "
        f"bound above +{threshold:.0%})"
    )
    shown = [c for c in changes if c.status != "not run"]
    table = rich_table(change_rows(shown), cols, title, lambda r: styles.get(r["status"]))
    print_table(table, file=file, width=table_width(file))
    if len(shown) < len(changes):
        print(
            f"{len(changes) - len(shown)} row(s) of the old report not shown: this run did "
            "not ask for their runtime, device or batch size",
            file=file,
        )
