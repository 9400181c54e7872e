"""Runs and steps as records: statuses, and the conversion from Redis bookkeeping.

The same :class:`RunRecord` is what ``status()`` returns (as a dict) and what the store writes.
"""

from __future__ import annotations

import enum
import functools
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..state.runs import LiveRun


class RunStatus(enum.StrEnum):
    """Where a run is: waiting, in flight, or in one of its three terminal states."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        """True for finished, failed and canceled."""
        return self in (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.CANCELED)


class StepStatus(enum.StrEnum):
    """Where a step is. ``mapped`` is a node fanned out over items; ``ready`` awaits its job."""

    READY = "ready"
    QUEUED = "queued"
    RUNNING = "running"
    MAPPED = "mapped"
    FINISHED = "finished"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELED = "canceled"


class EncodedJSON(str):
    """A value as JSON text, written to SQL as it is: runs hold their values as JSON in Redis,
    so the hand-over to SQL need not parse them only for the store to serialize them again."""


@dataclass(frozen=True)
class StepRecord:
    """One step of one run: ``step`` is the node, or ``node-<i>`` for a mapped instance."""

    step: str
    node: str
    index: int | None
    status: str
    attempts: int = 0
    input: Any = None
    output: Any = None
    error: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    worker: str | None = None


@dataclass(frozen=True)
class RunRecord:
    """One run: its header, its result (the sinks' merged state) and its steps."""

    run_id: str
    package: str
    start: str
    status: str
    input: Any
    result: Any = None
    error: str | None = None
    created_at: datetime | None = None
    ended_at: datetime | None = None
    steps: tuple[StepRecord, ...] = field(default_factory=tuple)

    def node_statuses(self) -> dict[str, str]:
        """Node (or mapped instance) -> status, graph order first."""
        return {step.step: step.status for step in self.steps}

    def to_status(self) -> dict[str, Any]:
        """The dict ``ezgraph.status()`` returns."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "start": self.start,
            "nodes": self.node_statuses(),
            "result": self.result,
            "error": self.error,
            "created_at": _iso(self.created_at),
            "ended_at": _iso(self.ended_at),
            "steps": [
                {
                    "step": s.step,
                    "node": s.node,
                    "index": s.index,
                    "status": s.status,
                    "attempts": s.attempts,
                    "output": s.output,
                    "error": s.error,
                    "started_at": _iso(s.started_at),
                    "ended_at": _iso(s.ended_at),
                    "worker": s.worker,
                }
                for s in self.steps
            ],
        }


def record_from_live(
    live: LiveRun, job_statuses: dict[str, str] | None = None, encoded: bool = False
) -> RunRecord:
    """Build a :class:`RunRecord` from Redis bookkeeping.

    ``job_statuses`` (step -> RQ job status) lets a queued step show as running while RQ runs it.
    ``encoded``: the input, outputs and result stay JSON text (:class:`EncodedJSON`), for the
    store; otherwise they are parsed.
    """
    header = live.header
    graph = _graph(header["graph"])
    order: list[str] = list(graph["succ"])
    steps: list[StepRecord] = []
    for node in order:
        fields = live.steps.get(node)
        if fields:
            steps.append(_step(node, node, None, fields, job_statuses, encoded))
        count = int(fields.get("map", 0)) if fields else 0
        for i in range(count):
            name = f"{node}-{i}"
            steps.append(_step(name, node, i, live.steps.get(name, {}), job_statuses, encoded))
    status = header["status"]
    if status == RunStatus.QUEUED and any(s.status != StepStatus.QUEUED for s in steps):
        status = RunStatus.RUNNING
    result: Any = None
    if status == RunStatus.FINISHED:
        kept = [live.states[n] for n in order if not graph["succ"][n] and n in live.states]
        if encoded and len(kept) == 1:
            result = EncodedJSON(kept[0])
        else:
            result = {}
            for state in kept:
                result.update(json.loads(state))
    return RunRecord(
        run_id=live.run_id,
        package=header.get("package", ""),
        start=header.get("start", ""),
        status=status,
        input=_json(header.get("input") or "null", encoded),
        result=result,
        error=header.get("error") or None,
        created_at=parse_rq_date(header.get("created_at")),
        ended_at=parse_rq_date(header.get("ended_at")),
        steps=tuple(steps),
    )


@functools.lru_cache(maxsize=64)
def _graph(text: str) -> dict[str, Any]:
    """A run's graph shape, parsed once per distinct graph (every run of a graph has it).
    Callers must not change it."""
    graph: dict[str, Any] = json.loads(text)
    return graph


def _json(text: str, encoded: bool) -> Any:
    return EncodedJSON(text) if encoded else json.loads(text)


def _step(
    name: str,
    node: str,
    index: int | None,
    fields: dict[str, str],
    jobs: dict[str, str] | None,
    encoded: bool = False,
) -> StepRecord:
    status = fields.get("status", StepStatus.QUEUED.value)
    if status == StepStatus.QUEUED and jobs and jobs.get(name) == "started":
        status = StepStatus.RUNNING.value
    step_input, output = fields.get("input"), fields.get("output")
    return StepRecord(
        step=name,
        node=node,
        index=index,
        status=status,
        attempts=int(fields.get("attempts") or 0),
        input=_json(step_input, encoded) if step_input else None,
        output=_json(output, encoded) if output else None,
        error=fields.get("error") or None,
        started_at=parse_rq_date(fields.get("started_at")),
        ended_at=parse_rq_date(fields.get("ended_at")),
        worker=fields.get("worker") or None,
    )


def parse_rq_date(text: str | None) -> datetime | None:
    """Parse a date stored in RQ's format; None for empty."""
    if not text:
        return None
    # fromisoformat reads RQ's "%Y-%m-%dT%H:%M:%S.%fZ" (Python 3.11+), far faster than strptime.
    return datetime.fromisoformat(text)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
