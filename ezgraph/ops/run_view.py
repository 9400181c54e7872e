"""One run as an operator reads it: each node's status (pending ones too), its steps, mapped
nodes as a count with their progress, and RQ's times for the steps whose jobs it still holds.

The dashboard's run page, ``ezgraph status`` (``--watch`` too), ``ezgraph viz RUN_ID`` and
``ezgraph diagnose`` all read a run through :func:`view_run`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .. import rq_compat
from ..client import GraphOrchestrator
from ..errors import GraphError
from ..model.graph import Graph
from ..model.records import RunRecord, RunStatus, StepRecord
from ..model.render import render
from ..model.step_job import job_id

TRUNCATE = 2_000  # characters of an input or output a page shows


@dataclass(frozen=True)
class MapProgress:
    """A mapped node: how many instances, and how many are in each status."""

    node: str
    total: int
    by_status: dict[str, int]

    @property
    def done(self) -> int:
        """Instances that ended (finished, failed, skipped or canceled)."""
        return sum(n for s, n in self.by_status.items() if s not in ("queued", "running"))

    @property
    def status(self) -> str:
        """The node's status from its instances': failed, running, queued, or finished."""
        for status in ("failed", "canceled", "running", "queued"):
            if self.by_status.get(status):
                return status
        return "finished"

    @property
    def label(self) -> str:
        """``3/8 done`` (the line a drawing adds under the node)."""
        return f"{self.done}/{self.total} done"


@dataclass(frozen=True)
class RunView:
    """A run, its graph (None when this process cannot import the graph's package) and the
    status of every node of it."""

    record: RunRecord
    graph: Graph | None
    nodes: dict[str, str]  # node -> status, every node of the graph (pending ones too)
    maps: dict[str, MapProgress]
    queued_at: dict[str, str] = field(default_factory=dict)  # step -> RQ's enqueued_at

    @property
    def terminal(self) -> bool:
        """True once the run ended."""
        return RunStatus(self.record.status).terminal

    def rows(self) -> list[StepRecord | MapProgress]:
        """The steps in graph order, each mapped node's instances as one :class:`MapProgress`
        (the node's own step, which mapped, comes first)."""
        rows: list[StepRecord | MapProgress] = []
        shown: set[str] = set()
        for step in self.record.steps:
            if step.index is None:
                rows.append(step)
            elif step.node not in shown:
                shown.add(step.node)
                rows.append(self.maps[step.node])
        return rows

    def instances(self, node: str) -> list[StepRecord]:
        """The mapped instances of ``node``."""
        return [s for s in self.record.steps if s.node == node and s.index is not None]

    def drawing(self, fmt: str) -> str:
        """The run's graph as text, Mermaid or DOT, coloured by the nodes' statuses."""
        if self.graph is None:
            return "\n".join(f"{node} [{status}]" for node, status in self.nodes.items())
        labels = {node: progress.label for node, progress in self.maps.items()}
        return render(self.graph, fmt, self.nodes, labels)

    def to_json(self) -> dict[str, Any]:
        """The run's status dict, with every node's status and the maps' progress."""
        status = self.record.to_status()
        status["nodes"] = self.nodes
        status["maps"] = {
            node: {"total": p.total, "done": p.done, "by_status": p.by_status}
            for node, p in self.maps.items()
        }
        return status


def view_run(orchestrator: GraphOrchestrator, run_id: str, with_rq: bool = True) -> RunView:
    """The run ``run_id`` (Redis while live, SQL after) with its graph's every node.

    Raises:
        UsageError: for a malformed run id.
        RunNotFound: for an unknown run.
    """
    record = orchestrator.get_run(run_id)
    graph = _graph_of(orchestrator, record.package)
    maps = _maps(record.steps)
    nodes = node_statuses(record, graph, maps)
    queued_at: dict[str, str] = {}
    if with_rq and record.steps:
        jobs = [job_id(run_id, step.step) for step in record.steps]
        details = rq_compat.job_details(orchestrator.context.connection, jobs)
        queued_at = {
            step.step: found["enqueued_at"]
            for step, found in zip(record.steps, details, strict=True)
            if found.get("enqueued_at")
        }
    return RunView(record, graph, nodes, maps, queued_at)


def node_statuses(
    record: RunRecord, graph: Graph | None, maps: dict[str, MapProgress]
) -> dict[str, str]:
    """Every node's status: its step's (a mapped node: from its instances), else ``pending``
    while the run is live and ``not run`` once it ended."""
    own = {s.node: str(s.status) for s in record.steps if s.index is None}
    for node, progress in maps.items():
        own[node] = progress.status
    if graph is None:
        return own
    missing = "not run" if RunStatus(record.status).terminal else "pending"
    return {node: own.get(node, missing) for node in graph.nodes}


def _maps(steps: tuple[StepRecord, ...]) -> dict[str, MapProgress]:
    counts: dict[str, Counter[str]] = {}
    for step in steps:
        if step.index is not None:
            counts.setdefault(step.node, Counter())[str(step.status)] += 1
    return {
        node: MapProgress(node, sum(c.values()), dict(sorted(c.items())))
        for node, c in counts.items()
    }


def _graph_of(orchestrator: GraphOrchestrator, package: str) -> Graph | None:
    try:
        return orchestrator.context.graph(package or None)
    except GraphError:
        return None


def truncate(value: Any, limit: int = TRUNCATE) -> str:
    """``value`` as JSON-ish text, cut at ``limit`` characters (with how much was left)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=1)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"
