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


def read_events(
    context: Context, run_id: str, follow: bool = False, timeout: float | None = None
) -> Iterator[dict[str, Any]]:
    """The run's events from its first, as dicts (each with ``type``, ``step``, ``at``; those a
    step emitted also with their ``id``); ``follow``: then the new ones as they come, until the
    run ends (or ``timeout`` seconds).

    Raises:
        RunNotFound: when neither Redis nor the database knows the run.
    """
    tuning = context.tuning
    deadline = None if timeout is None else time.monotonic() + timeout
    last = "0-0"
    seen: set[tuple[str, str]] = set()  # lifecycle events given: (step, status)
    while True:
        header, steps, entries = context.runs.read_events(run_id, last, tuning.events_chunk)
        if not header:  # never there, or written to SQL and expired: the rest is in SQL
            record = context.store.load_run(run_id)
            if record is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            stored = [e for e in context.store.load_events(run_id) if _after(e.event_id, last)]
            yield from _merge(stored, _lifecycle(_stored_steps(record.steps), seen))
            return
        if entries:
            last = entries[-1].event_id
        yield from _merge(entries, _lifecycle(_live_steps(steps), seen))
        if len(entries) == tuning.events_chunk:
            continue  # more wait: read on before looking at the run's end
        # The run's events all precede its end (a step emits before it is recorded), and the
        # header was read before them: an ended run has nothing more to give.
        if not follow or header.get("ended_at"):
            return
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        block = tuning.events_block if left is None else min(tuning.events_block, left)
        # Wakes on a new event; a step's end (not in the stream) shows within `block`.
        key = context.keys.events(run_id)
        context.connection.xread({key: last}, count=1, block=max(1, int(block * 1000)))


def as_dict(event: EventRecord) -> dict[str, Any]:
    """A stored event as the dict readers get: its body and its ``id``."""
    body: dict[str, Any] = json.loads(event.body)
    return {**body, "id": event.event_id}


def _merge(
    emitted: Iterable[EventRecord], lifecycle: list[dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """Emitted events (in stream order) and lifecycle events, together in time order."""
    events = [as_dict(e) for e in emitted] + lifecycle
    events.sort(key=_when)  # stable: events of one moment keep their order
    return iter(events)


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
