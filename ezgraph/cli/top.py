"""``ezgraph top``: queues, workers and steps per second, redrawn in place (``rich``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from .. import rq_compat
from ..context import Context
from ..ops.system import queue_names, read_workers


@dataclass
class Snapshot:
    """One look at the queues and workers, and when it was taken."""

    at: float
    counts: dict[str, dict[str, int]]
    ended: int  # steps finished or failed, over every queue (RQ's registries)


class Top:
    """Reads the system once per interval and draws it."""

    def __init__(self, context: Context, console: Console, nodes: tuple[str, ...] = ()) -> None:
        self.context = context
        self.console = console
        self.nodes = nodes
        self._last: Snapshot | None = None

    def look(self) -> Snapshot:
        """The queues' job counts now."""
        queues = queue_names(self.context, self.nodes)
        counts = rq_compat.job_counts(self.context.connection, queues)
        ended = sum(c["finished"] + c["failed"] for c in counts.values())
        return Snapshot(time.monotonic(), counts, ended)

    def rate(self, now: Snapshot) -> float | None:
        """Steps ended per second since the last look (None on the first)."""
        last, self._last = self._last, now
        if last is None or now.at <= last.at:
            return None
        return max(0, now.ended - last.ended) / (now.at - last.at)

    def render(self) -> Group:
        """The view: a line of totals, the queues table, the workers table."""
        snapshot = self.look()
        rate = self.rate(snapshot)
        workers = read_workers(self.context)
        live = self.context.connection.zcard(self.context.keys.live_runs)
        unsaved = self.context.runs.unsaved_count()
        steps = "-" if rate is None else f"{rate:,.1f}"
        alive = sum(w.alive for w in workers)
        head = (
            f"steps/s {steps}   runs in flight {live}   waiting for SQL {unsaved}"
            f"   workers {alive} alive, {len(workers) - alive} dead"
        )
        queues = Table(title="queues", title_justify="left")
        for column in ("queue", "queued", "started", "scheduled", "failed", "finished", "workers"):
            queues.add_column(column, justify="left" if column == "queue" else "right")
        for queue, counts in snapshot.counts.items():
            serving = sum(1 for w in workers if w.alive and queue in w.queues)
            figures = [str(counts[s]) for s in ("queued", "started", "scheduled", "failed")]
            figures.append(str(counts["finished"]))
            queues.add_row(queue, *figures, str(serving) if serving else "[red]0[/]")
        table = Table(title="workers", title_justify="left")
        for column in ("worker", "kind", "state", "queues", "current job"):
            table.add_column(column)
        for worker in workers:
            state = worker.state if worker.alive else f"[red]dead[/]: {worker.why_dead}"
            table.add_row(
                worker.name, worker.kind, state, ",".join(worker.queues), worker.current_job or ""
            )
        return Group(head, queues, table)

    def show(self, interval: float, once: bool) -> None:
        """Draw until Ctrl-C (on a terminal in place, else a snapshot per interval)."""
        if once:
            self.look_twice(min(interval, 1.0))
            self.console.print(self.render())
            return
        try:
            if self.console.is_terminal:
                with Live(self.render(), console=self.console, auto_refresh=False) as live:
                    while True:
                        time.sleep(interval)
                        live.update(self.render(), refresh=True)
            while True:
                self.console.print(self.render())
                time.sleep(interval)
        except KeyboardInterrupt:
            return

    def look_twice(self, gap: float) -> None:
        """Take a first look, then wait ``gap``, so the next render has a rate."""
        self.rate(self.look())
        time.sleep(gap)
