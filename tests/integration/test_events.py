"""A run's events (progress, emit, step starts and ends): kept from the first, in Redis while
the run lives and in SQL after, so a reader that comes late misses nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.errors import PayloadError, RunNotFound
from ezgraph.model.module_api import StepContext

from ..conftest import drain


def emitted(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What the steps themselves emitted, without times and ids."""
    shown = []
    for event in events:
        if event["type"] == "progress":
            numbers = (event["done"], event["total"], event["message"])
            shown.append(("progress", event["step"], *numbers))
        elif event["type"] != "step":
            shown.append((event["type"], event["step"], event.get("text")))
    return shown


EXPECTED = [
    ("progress", "work", 1, 3, "part 1"),
    ("progress", "work", 2, 3, "part 2"),
    ("progress", "work", 3, 3, "part 3"),
    ("note", "work", "done"),
]


def test_events_emitted_before_anyone_reads_are_all_read_from_redis_then_from_sql(
    make_context: Callable[..., Context], redis_conn: Redis, database_url: str
) -> None:
    context = make_context("tests.graphs.reporting", database_url=database_url)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("work", {})
    drain(context)  # every event is emitted, and the run written to SQL, before any reader

    live = list(orchestrator.events(run_id))
    assert emitted(live) == EXPECTED
    assert all(e["at"] and (e["id"] or e["type"] == "step") for e in live)
    lifecycle = [(e["step"], e["status"]) for e in live if e["type"] == "step"]
    assert lifecycle == [
        ("work", "started"),
        ("work", "finished"),
        ("done", "started"),
        ("done", "finished"),
    ]
    assert live.index(next(e for e in live if e["type"] == "progress")) == 1  # after the start

    assert redis_conn.ttl(context.keys.events(run_id)) > 0  # expires with the run's keys
    redis_conn.delete(*context.keys.run_keys(run_id))  # as EZGRAPH_RUN_TTL does
    stored = list(orchestrator.events(run_id))
    assert stored == live


def test_a_follower_that_comes_late_gets_every_event_then_the_new_ones(
    make_context: Callable[..., Context],
) -> None:
    context = make_context("tests.graphs.reporting")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("work", {})
    step = StepContext(run_id, "work", None, 1, "", events=_sink(context, run_id))
    step.progress(1, 2)  # before anyone follows
    got: list[dict[str, Any]] = []
    follower = threading.Thread(
        target=lambda: got.extend(orchestrator.events(run_id, follow=True, timeout=30))
    )
    follower.start()
    step.progress(2, 2, "late")
    drain(context)  # the run goes on to its end: the follower stops there
    follower.join(30)
    assert not follower.is_alive()
    progress = [(e["done"], e["message"]) for e in got if e["type"] == "progress"]
    assert progress[:2] == [(1, None), (2, "late")]
    assert emitted(got)[2:] == EXPECTED  # then the run's own step's


def test_events_of_an_unknown_run_are_refused(make_context: Callable[..., Context]) -> None:
    orchestrator = GraphOrchestrator(context=make_context("tests.graphs.reporting"))
    with pytest.raises(RunNotFound):
        list(orchestrator.events("0" * 32))


def test_a_bad_event_fails_its_call_with_one_line() -> None:
    sent: list[dict[str, Any]] = []
    step = StepContext("r", "work", 2, 1, "", events=sent.append)
    with pytest.raises(PayloadError, match="done must be a number"):
        step.progress("half", 2)  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="ezgraph sets 'step'"):
        step.emit({"step": "other"})
    with pytest.raises(PayloadError, match="type 'progress' is ezgraph's own"):
        step.emit({"type": "progress"})
    step.emit({"rows": 3})
    assert sent == [{"rows": 3, "type": "event", "step": "work-2"}]


def _sink(context: Context, run_id: str) -> Callable[[dict[str, Any]], None]:
    from ezgraph.events import event_sink

    return event_sink(context, run_id)
