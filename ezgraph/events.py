"""A run's events: what its steps report (``progress``, ``emit``) and its steps' starts and ends.

A step's events go to its run's Redis stream (``run:<id>:events``, capped, expiring with the
run's other keys); the hand-over writes them to ``ezgraph_run_events`` with the run. Reading
(:func:`read_events`) starts from the first event, from Redis while the run is there and from
SQL after, so a reader that comes late misses nothing; following goes on until the run ends.

Step lifecycle events (``{"type": "step", "step", "status", "at"}``: ``started``, then how it
ended) are not stored: they are read from the steps' own records, which hold those times
already, so they cost a step nothing.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from .context import Context
from .errors import RunNotFound
from .model.module_api import EventSink
from .model.payload import to_json
from .model.records import EventRecord, StepRecord, parse_rq_date

logger = logging.getLogger(__name__)

ENDED = ("finished", "failed", "skipped", "canceled")


def event_sink(context: Context, run_id: str) -> EventSink:
    """What a step's ``progress()`` and ``emit()`` call: stamp the event and append it to the
    run's stream (one script call; over ``EZGRAPH_MAX_PAYLOAD`` or not JSON: PayloadError)."""
    limit = context.settings.max_payload_bytes

    def append(event: dict[str, Any]) -> None:
        event["at"] = datetime.now(UTC).isoformat()
        body = to_json(event, f"step {event.get('step')!r}: event", limit)
        if context.runs.append_event(run_id, body) is None:
            logger.warning("run %s step %s: run gone from Redis, event dropped", run_id, event)

    return append


class EventCursor:
    """Reads a run's events from its first, a batch at a time: :meth:`read` gives the events
    not given yet (from Redis while the run is there, from SQL after)."""

    def __init__(self, context: Context, run_id: str) -> None:
        self.context = context
        self.run_id = run_id
        self.last = "0-0"  # the id of the last emitted event given
        self.seen: set[tuple[str, str]] = set()  # lifecycle events given: (step, status)
        self.ended = False  # the run ended: nothing more will come

    def read(self) -> list[dict[str, Any]]:
        """The events not given yet, in time order.

        Raises:
            RunNotFound: when neither Redis nor the database knows the run.
        """
        events: list[dict[str, Any]] = []
        chunk = self.context.tuning.events_chunk
        while not self.ended:
            header, steps, entries = self.context.runs.read_events(self.run_id, self.last, chunk)
            if not header:  # never there, or written to SQL and expired: the rest is in SQL
                events += self._read_stored()
                self.ended = True
                break
            if entries:
                self.last = entries[-1].event_id
            events += _merge(entries, _lifecycle(_live_steps(steps), self.seen))
            if len(entries) < chunk:
                # The run's events all precede its end (a step emits before it is recorded),
                # and the header was read before them: an ended run has nothing more to give.
                self.ended = bool(header.get("ended_at"))
                break
        return events

    def _read_stored(self) -> list[dict[str, Any]]:
        record = self.context.store.load_run(self.run_id)
        if record is None:
            raise RunNotFound(f"no run with id {self.run_id!r}")
        stored = self.context.store.load_events(self.run_id)
        new = [e for e in stored if _after(e.event_id, self.last)]
        return _merge(new, _lifecycle(_stored_steps(record.steps), self.seen))


def read_events(
    context: Context, run_id: str, follow: bool = False, timeout: float | None = None
) -> Iterator[dict[str, Any]]:
    """The run's events from its first, as dicts (each with ``type``, ``step``, ``at``; those a
    step emitted also with their ``id``); ``follow``: then the new ones as they come, until the
    run ends (or ``timeout`` seconds).

    Raises:
        RunNotFound: when neither Redis nor the database knows the run.
    """
    block = context.tuning.events_block
    deadline = None if timeout is None else time.monotonic() + timeout
    cursor = EventCursor(context, run_id)
    while True:
        yield from cursor.read()
        left = math.inf if deadline is None else deadline - time.monotonic()
        if cursor.ended or not follow or left <= 0:
            return
        # Wakes on a new event; a step's end (not in the stream) shows within `block`.
        wait = max(1, int(min(block, left) * 1000))
        context.connection.xread({context.keys.events(run_id): cursor.last}, count=1, block=wait)


def as_dict(event: EventRecord) -> dict[str, Any]:
    """A stored event as the dict readers get: its body and its ``id``."""
    body: dict[str, Any] = json.loads(event.body)
    return {**body, "id": event.event_id}


def _merge(emitted: Iterable[EventRecord], lifecycle: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Emitted events (in stream order) and lifecycle events, together in time order."""
    events = [as_dict(e) for e in emitted] + lifecycle
    events.sort(key=_when)  # stable: events of one moment keep their order
    return events


def _when(event: Mapping[str, Any]) -> datetime:
    at = event.get("at")
    return _utc(parse_rq_date(at) if isinstance(at, str) else None) or datetime.min.replace(
        tzinfo=UTC
    )


def _utc(when: datetime | None) -> datetime | None:
    """``when`` in UTC (SQLite gives the dates it stored back without their zone)."""
    if when is None:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _lifecycle(
    steps: Iterable[tuple[str, str, datetime | None, datetime | None]],
    seen: set[tuple[str, str]],
) -> list[dict[str, Any]]:
    """The lifecycle events of steps (name, status, started, ended) not given yet."""
    events = []
    for step, status, started, ended in steps:
        for kind, when in (("started", started), (status, ended)):
            when = _utc(when)
            if when is None or (kind != "started" and kind not in ENDED):
                continue
            if (step, kind) in seen:
                continue
            seen.add((step, kind))
            events.append(
                {"type": "step", "step": step, "status": kind, "at": when.isoformat(), "id": None}
            )
    return events


def _live_steps(
    steps: Mapping[str, Mapping[str, str]],
) -> Iterator[tuple[str, str, datetime | None, datetime | None]]:
    for step, fields in steps.items():
        yield (
            step,
            fields.get("status", ""),
            parse_rq_date(fields.get("started_at")),
            parse_rq_date(fields.get("ended_at")),
        )


def _stored_steps(
    steps: Iterable[StepRecord],
) -> Iterator[tuple[str, str, datetime | None, datetime | None]]:
    for step in steps:
        yield step.step, str(step.status), step.started_at, step.ended_at


def _after(event_id: str, last: str) -> bool:
    """Whether stream id ``event_id`` comes after ``last``."""
    return _id_key(event_id) > _id_key(last)


def _id_key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)
