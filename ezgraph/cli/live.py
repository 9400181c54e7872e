"""A run as it goes, for ``ezgraph status --watch`` and ``ezgraph submit --wait`` (and the
lines of ``ezgraph status --follow``).

On a terminal, a per-node table redrawn in place by ``rich`` (a progress bar for each mapped
node, and for each step that reports its progress, with its last message); elsewhere (a pipe,
a log file), one plain line per node whose status changed and per event a step emitted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..client import GraphOrchestrator
from ..events import EventCursor
from ..model.records import RunStatus
from ..ops.run_view import RunView, view_run

# What a run's steps last reported: step -> its last progress event, or its last other event.
Reports = dict[str, dict[str, Any]]

STYLES = {
    "pending": "dim",
    "not run": "dim",
    "queued": "white",
    "running": "bold blue",
    "waiting": "bold yellow",
    "mapped": "magenta",
    "finished": "green",
    "failed": "bold red",
    "skipped": "dim",
    "canceled": "yellow",
}


def event_line(event: dict[str, Any]) -> str:
    """One event as a line: its time, step, and what it says."""
    at = event.get("at")
    when = datetime.fromisoformat(at).strftime("%H:%M:%S.%f")[:-3] if isinstance(at, str) else ""
    step, kind = event.get("step") or "", event.get("type")
    if kind == "step":
        said = str(event.get("status"))
    elif kind == "progress":
        said = f"progress {event.get('done')}/{event.get('total')}"
        if event.get("message"):
            said += f" {event['message']}"
    else:
        rest = {k: v for k, v in event.items() if k not in ("type", "step", "at", "id")}
        said = f"{kind} {json.dumps(rest, ensure_ascii=False)}"
    return f"{when} {step:<24} {said}"


def report_text(report: dict[str, Any] | None) -> str:
    """What a step last reported, short: its progress message, or its last event."""
    if not report:
        return ""
    if report.get("type") == "progress":
        return str(report.get("message") or "")
    return event_line(report).split(maxsplit=2)[-1][:60]


def run_table(view: RunView, reports: Reports | None = None) -> Table:
    """The run's nodes, their statuses, attempts, times, maps' and steps' progress, and what
    each step last reported, as a table."""
    reports = reports or {}
    record = view.record
    title = f"run {record.run_id}: [{STYLES.get(str(record.status), '')}]{record.status}[/]"
    table = Table(title=title, title_justify="left", expand=False)
    for column in ("node", "status", "attempts", "took", "progress", "reported"):
        table.add_column(column)
    steps = {step.step: step for step in record.steps}
    for node, status in view.nodes.items():
        step = steps.get(node)
        attempts = str(step.attempts) if step and step.attempts else ""
        took = ""
        if step and step.started_at and step.ended_at:
            took = f"{(step.ended_at - step.started_at).total_seconds() * 1000:.0f} ms"
        progress: ProgressBar | Text = Text("")
        report = reports.get(node)
        if node in view.maps:
            mapped = view.maps[node]
            progress = ProgressBar(total=mapped.total or 1, completed=mapped.done, width=30)
            attempts = f"{mapped.total} items"
            took = mapped.label
        elif report and report.get("type") == "progress":
            total, done = float(report.get("total") or 0), float(report.get("done") or 0)
            progress = ProgressBar(total=total or 1, completed=min(done, total), width=30)
        said = Text(report_text(report), style="dim")
        row = (node, Text(status, style=STYLES.get(status, "")), attempts, took, progress, said)
        table.add_row(*row)
    if record.error:
        table.caption = f"error: {' '.join(record.error.split())[:200]}"
    return table


def changes(before: dict[str, str], view: RunView) -> list[str]:
    """One line per node whose status (or map progress) changed since ``before``."""
    lines = []
    for node, status in view.nodes.items():
        shown = f"{status} ({view.maps[node].label})" if node in view.maps else status
        if before.get(node) != shown:
            lines.append(f"{node}: {shown}")
            before[node] = shown
    return lines


def follow(
    orchestrator: GraphOrchestrator,
    run_id: str,
    console: Console,
    timeout: float,
    show_first: bool = True,
    every: float = 0.25,
) -> RunView:
    """Show run ``run_id`` until it ends (or ``timeout`` seconds); returns its last view.

    ``show_first``: in plain mode, print the nodes' first statuses too (else only changes).
    """
    deadline = time.monotonic() + timeout
    view = view_run(orchestrator, run_id, with_rq=False)
    cursor = EventCursor(orchestrator.context, run_id)
    reports: Reports = {}
    if console.is_terminal:
        _report(cursor, reports)
        with Live(run_table(view, reports), console=console, refresh_per_second=8) as live:

            def redraw(current: RunView) -> None:
                _report(cursor, reports)
                live.update(run_table(current, reports))

            view = _loop(orchestrator, run_id, deadline, every, redraw)
        return view
    seen: dict[str, str] = {}
    lines = changes(seen, view)
    if show_first:
        for line in lines:
            console.print(line, highlight=False)

    def show(current: RunView) -> None:
        for line in changes(seen, current):
            console.print(line, highlight=False)
        for event in _report(cursor, reports):
            console.print(event_line(event), highlight=False, markup=False)

    view = _loop(orchestrator, run_id, deadline, every, show)
    show(view)  # the events of the run's last moments
    return view


def _report(cursor: EventCursor, reports: Reports) -> list[dict[str, Any]]:
    """Read the events a run's steps emitted since the last look; keep each step's last."""
    emitted = [event for event in cursor.read() if event.get("type") != "step"]
    for event in emitted:
        reports[str(event.get("step"))] = event
    return emitted


def _loop(
    orchestrator: GraphOrchestrator,
    run_id: str,
    deadline: float,
    every: float,
    show: Callable[[RunView], object],
) -> RunView:
    view = view_run(orchestrator, run_id, with_rq=False)
    while not RunStatus(view.record.status).terminal and time.monotonic() < deadline:
        time.sleep(min(every, max(0.0, deadline - time.monotonic())))
        view = view_run(orchestrator, run_id, with_rq=False)
        show(view)
    return view
