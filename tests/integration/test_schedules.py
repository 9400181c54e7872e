"""Schedules: one run per tick, however many schedulers fire at once."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.errors import EzgraphError, ScheduleNotFound, UsageError
from ezgraph.schedules import Schedules

from ..conftest import drain


def test_each_tick_fires_one_run_with_many_schedulers_at_once(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.chain")
    added = Schedules(context).add("every5", "*/5 * * * *", "a", {"trail": []})
    tick = added.next_tick(added.created_at)
    barrier = threading.Barrier(8)
    fired: list[tuple[str, int, str]] = []

    def scheduler() -> None:
        own = Schedules(make_context("tests.graphs.chain"))
        barrier.wait()
        fired.extend(own.fire_due(now=tick + 1))

    threads = [threading.Thread(target=scheduler) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [(name, at) for name, at, _ in fired] == [("every5", tick)]
    run_id = fired[0][2]
    assert context.runs.live() == [run_id]
    assert Schedules(context).fire_due(now=tick + 30) == []  # the same tick: fired already
    assert Schedules(context).fired() == {"every5": (tick, run_id)}

    drain(context)
    assert GraphOrchestrator(context=context).status(run_id)["result"]["trail"] == ["a", "b"]
    later = Schedules(context).fire_due(now=tick + 300 + 1)  # the next tick: a new run
    assert [(name, at) for name, at, _ in later] == [("every5", tick + 300)]
    assert later[0][2] != run_id


def test_ticks_before_the_schedule_or_long_missed_do_not_fire(
    make_context: Callable[..., Context],
) -> None:
    context = make_context("tests.graphs.chain")
    schedules = Schedules(context)
    added = schedules.add("hourly", "0 * * * *", "a", {})
    tick = added.next_tick(added.created_at)
    assert schedules.fire_due(now=added.created_at + 0.5) == []  # the tick before it was added
    missed = tick + context.tuning.schedule_grace + 1
    assert schedules.fire_due(now=missed) == []  # no scheduler ran at the tick: skipped
    assert context.runs.live() == []


def test_bad_schedules_are_refused_in_one_line(make_context: Callable[..., Context]) -> None:
    schedules = Schedules(make_context("tests.graphs.chain"))
    with pytest.raises(UsageError, match=r"invalid cron expression '\*/5 \* \* \*'"):
        schedules.add("s", "*/5 * * *", "a", {})
    with pytest.raises(UsageError, match="out of range"):
        schedules.add("s", "61 * * * *", "a", {})
    with pytest.raises(UsageError, match="unknown start module 'nope'"):
        schedules.add("s", "* * * * *", "nope", {})
    with pytest.raises(UsageError, match="schedule name"):
        schedules.add("a b", "* * * * *", "a", {})
    schedules.add("s", "* * * * *", "a", {})
    with pytest.raises(EzgraphError, match="exists"):
        schedules.add("s", "*/2 * * * *", "a", {})
    schedules.remove("s")
    with pytest.raises(ScheduleNotFound):
        schedules.remove("s")
    assert schedules.all() == []
