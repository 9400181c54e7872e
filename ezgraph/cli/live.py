"""A run as it goes, for ``ezgraph status --watch`` and ``ezgraph submit --wait``.

On a terminal, a per-node table redrawn in place by ``rich`` (a progress bar for each mapped
node); elsewhere (a pipe, a log file), one plain line per node whose status changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..client import GraphOrchestrator
from ..model.records import RunStatus
from ..ops.run_view import RunView, view_run

STYLES = {
    "pending": "dim",
    "not run": "dim",
    "queued": "white",
    "running": "bold blue",
    "mapped": "magenta",
    "finished": "green",
    "failed": "bold red",
    "skipped": "dim",
    "canceled": "yellow",
}


def run_table(view: RunView) -> Table:
    """The run's nodes, their statuses, attempts, times and maps' progress, as a table."""
    record = view.record
    title = f"run {record.run_id}: [{STYLES.get(str(record.status), '')}]{record.status}[/]"
    table = Table(title=title, title_justify="left", expand=False)
    for column in ("node", "status", "attempts", "took", "progress"):
        table.add_column(column)
    steps = {step.step: step for step in record.steps}
    for node, status in view.nodes.items():
        step = steps.get(node)
        attempts = str(step.attempts) if step and step.attempts else ""
        took = ""
        if step and step.started_at and step.ended_at:
            took = f"{(step.ended_at - step.started_at).total_seconds() * 1000:.0f} ms"
        progress: ProgressBar | Text = Text("")
        if node in view.maps:
            mapped = view.maps[node]
            progress = ProgressBar(total=mapped.total or 1, completed=mapped.done, width=30)
            attempts = f"{mapped.total} items"
            took = mapped.label
        table.add_row(node, Text(status, style=STYLES.get(status, "")), attempts, took, progress)
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
    if console.is_terminal:
        with Live(run_table(view), console=console, refresh_per_second=8) as live:
            view = _loop(orchestrator, run_id, deadline, every, lambda v: live.update(run_table(v)))
        return view
    seen: dict[str, str] = {}
    lines = changes(seen, view)
    if show_first:
        for line in lines:
            console.print(line, highlight=False)

    def show(current: RunView) -> None:
        for line in changes(seen, current):
            console.print(line, highlight=False)

    return _loop(orchestrator, run_id, deadline, every, show)


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
