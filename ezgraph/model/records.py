"""Runs and steps as records, with their statuses.

The same :class:`RunRecord` is what ``status()`` returns (as a dict) and what the store writes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# The widest values the SQL columns hold: longer ones are refused at submit and in the graph,
# never met when a run is written.
MAX_RUN_ID = 64
MAX_NAME = 200  # node names and the modules package


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
    """Where a step is. ``mapped`` is a node fanned out over items; ``waiting`` a step whose
    module returned :class:`~ezgraph.Wait`, until its signal comes."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
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
    status: StepStatus
    attempts: int = 0
    input: Any = None
    output: Any = None
    error: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    worker: str | None = None
    waiting_for: str | None = None  # the signal a waiting step waits for


@dataclass(frozen=True)
class EventRecord:
    """One entry of a run's events: its stream id (``<ms>-<seq>``) and the event as JSON."""

    event_id: str
    body: str


@dataclass(frozen=True)
class RunRecord:
    """One run: its header, its result (the sinks' merged state) and its steps."""

    run_id: str
    package: str
    start: str
    status: RunStatus
    input: Any
    result: Any = None
    error: str | None = None
    created_at: datetime | None = None
    ended_at: datetime | None = None
    steps: tuple[StepRecord, ...] = field(default_factory=tuple)
    events: tuple[EventRecord, ...] = field(default_factory=tuple)  # what the writer stores
    idempotency_key: str | None = None  # the key it was submitted with, if any
    deadline_at: datetime | None = None  # when it fails if still going (while in Redis)

    def node_statuses(self) -> dict[str, StepStatus]:
        """Node (or mapped instance) -> status, graph order first."""
        return {step.step: step.status for step in self.steps}

    def to_status(self) -> dict[str, Any]:
        """The dict ``ezgraph.status()`` returns."""
        return {
            "run_id": self.run_id,
            "status": str(self.status),
            "start": self.start,
            "nodes": {name: str(status) for name, status in self.node_statuses().items()},
            "result": self.result,
            "error": self.error,
            "created_at": _iso(self.created_at),
            "ended_at": _iso(self.ended_at),
            "deadline_at": _iso(self.deadline_at),
            "steps": [
                {
                    "step": s.step,
                    "node": s.node,
                    "index": s.index,
                    "status": str(s.status),
                    "attempts": s.attempts,
                    "output": s.output,
                    "error": s.error,
                    "started_at": _iso(s.started_at),
                    "ended_at": _iso(s.ended_at),
                    "worker": s.worker,
                    **({"waiting_for": s.waiting_for} if s.waiting_for else {}),
                }
                for s in self.steps
            ],
        }


def parse_rq_date(text: str | None) -> datetime | None:
    """Parse a date stored in RQ's format; None for empty."""
    if not text:
        return None
    # fromisoformat reads RQ's "%Y-%m-%dT%H:%M:%S.%fZ" (Python 3.11+), far faster than strptime.
    return datetime.fromisoformat(text)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
