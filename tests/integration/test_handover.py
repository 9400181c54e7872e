"""Hand-over of ended runs to SQL by ezgraph workers: one writer at a time, nothing left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis
from rq import Queue

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.handover import RunWriter
from ezgraph.model.records import RunRecord
from ezgraph.rq_compat import RQ_DATE_FORMAT
from ezgraph.settings import TUNING
from ezgraph.workers.fast import FastWorker
from ezgraph.workers.maintenance import Maintenance
from ezgraph.workers.stock import StockProcess

from ..conftest import ROOT, drain, run_step_here, subprocess_env, wait_for

PACKAGE = "tests.graphs.chain"


def nobody_writes(run_id: str) -> None:
    """The run's worker died before writing it."""


def end_runs_unwritten(context: Context, count: int) -> list[str]:
    """Runs of a -> b that ended in Redis and were not written to SQL (the only ones waiting)."""
    run_ids = end_runs_unwritten_more(context, count)
    assert sorted(context.runs.unsaved()) == sorted(run_ids)
    return run_ids


def end_runs_unwritten_more(context: Context, count: int) -> list[str]:
    """``count`` more runs of a -> b that ended in Redis and were not written to SQL."""
    orchestrator = GraphOrchestrator(context=context)
    run_ids = [orchestrator.submit("a", {"trail": []}) for _ in range(count)]
    for run_id in run_ids:
        state: dict[str, object] = {"trail": []}
        for node in ("a", "b"):
            state = run_step_here(context, run_id, node, PACKAGE, state, ended=nobody_writes)
    return run_ids


def test_a_held_write_lock_makes_a_worker_wait_and_write_everything_once_free(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context(PACKAGE)
    run_ids = end_runs_unwritten(context, 3)
    lock = context.keys.write_lock
    redis_conn.set(lock, "another-worker", px=60_000)

    assert RunWriter(context, "this-worker").take_turn() is False  # another one is writing
    assert context.store.count_runs() == 0

    worker = FastWorker(
        [Queue(n, connection=redis_conn) for n in ("a", "b")],
        connection=redis_conn,
        context=context,
    )
    duties = Maintenance(worker, with_scheduler=False)
    duties.start()
    try:
        duties.write_soon()  # what a busy worker asks for
        time.sleep(0.2)  # it asks for the lock every 20 ms meanwhile
        assert context.store.count_runs() == 0
        redis_conn.delete(lock)
        # Within a second: sooner than the once-a-second sweep, which leaves runs younger than
        # 2 s to the worker that ended them.
        wait_for(lambda: context.store.count_runs() == 3, 1.0, "the runs to be written")
    finally:
        duties.stop()
    assert context.runs.unsaved() == []
    assert redis_conn.exists(lock) == 0  # released after writing
    stored = [context.store.load_run(r) for r in run_ids]
    assert all(run is not None and run.status == "finished" for run in stored)


def test_a_write_asked_for_while_one_is_finishing_is_not_absorbed_by_it(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """The busy worker asks again while the duties thread finishes a write (runs ended after
    its last read of Redis): that request gets a write of its own, not the sweep's 2 s later."""
    context = make_context(PACKAGE)
    first = end_runs_unwritten(context, 2)
    worker = FastWorker(
        [Queue(n, connection=redis_conn) for n in ("a", "b")],
        connection=redis_conn,
        context=context,
    )
    duties = Maintenance(worker, with_scheduler=False)
    late: list[str] = []
    write_unsaved = worker.writer.write_unsaved

    def write_then_more_end(
        older_than: float = 0.0, batch: int | None = None, until_empty: bool = True
    ) -> int:
        written = write_unsaved(older_than=older_than, batch=batch, until_empty=until_empty)
        if older_than == 0.0 and not late:  # the write the worker asked for, finishing
            late.extend(end_runs_unwritten(context, 2))
            duties.write_soon()
        return written

    worker.writer.write_unsaved = write_then_more_end  # type: ignore[method-assign]
    duties.start()
    try:
        duties.write_soon()
        wait_for(lambda: context.store.count_runs() == 4, 1.0, "the late runs to be written")
    finally:
        duties.stop()
    assert context.runs.unsaved() == []
    assert all(context.store.load_run(r) is not None for r in [*first, *late])


def flush_by_a_stock_worker(context: Context, run_ids: list[str]) -> None:
    """What a stock worker's process does with the runs its steps ended."""
    process = StockProcess(context)
    for run_id in run_ids:
        process.run_ended(run_id)
    process.flush()


def test_stock_workers_leave_their_runs_to_a_following_writer(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """While ``ezgraph persist --follow`` runs, a stock worker's process leaves the runs it
    ended in Redis for it; once it has stopped, it writes them itself again."""
    context = make_context(PACKAGE)
    follower = subprocess.Popen(
        [sys.executable, "-m", "ezgraph", "persist", "--follow"],
        env=subprocess_env(context.settings),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    key = context.keys.follower
    try:
        wait_for(lambda: redis_conn.exists(key) == 1, 20, "the follower to announce itself")
        follower.send_signal(signal.SIGSTOP)  # frozen: whatever gets written now is not its work
        left = end_runs_unwritten(context, 3)
        flush_by_a_stock_worker(context, left)
        assert context.store.count_runs() == 0
        assert sorted(context.runs.unsaved()) == sorted(left)
        follower.send_signal(signal.SIGCONT)
        wait_for(lambda: context.store.count_runs() == 3, 2.0, "the follower to write them")
    finally:
        follower.send_signal(signal.SIGCONT)
        follower.terminate()
        output, _ = follower.communicate(timeout=20)
    assert follower.returncode == 0, output
    assert output.strip().splitlines()[-1] == "stopped"
    assert redis_conn.exists(key) == 0  # withdrawn on a clean stop

    flush_by_a_stock_worker(context, end_runs_unwritten(context, 2))
    assert context.store.count_runs() == 5
    assert context.runs.unsaved() == []


@pytest.mark.parametrize("until_empty", [False, True])
def test_a_write_takes_the_runs_waiting_when_it_starts_or_goes_on_until_none_is_left(
    make_context: Callable[..., Context], until_empty: bool
) -> None:
    """``write_unsaved`` writes ``batch`` runs per transaction. The follower's writes
    (``until_empty=False``) take what was waiting: a run that ends meanwhile waits for the next
    write. A worker's writes go on until no run is left, that one included."""
    context = make_context(PACKAGE)
    waiting = end_runs_unwritten(context, 5)
    transactions: list[list[str]] = []
    late: list[str] = []
    writer = RunWriter(context, "test")
    write_runs = writer.write_runs

    def write_while_more_end(run_ids: Sequence[str]) -> list[str]:
        transactions.append(list(run_ids))
        if not late:
            late.extend(end_runs_unwritten_more(context, 1))
        return write_runs(run_ids)

    writer.write_runs = write_while_more_end  # type: ignore[method-assign]
    written = writer.write_unsaved(batch=2, until_empty=until_empty)
    if until_empty:
        assert written == 6
        assert [len(ids) for ids in transactions] == [2, 2, 2]
        assert context.runs.unsaved() == []
    else:
        assert written == 5
        assert [len(ids) for ids in transactions] == [2, 2, 1]
        assert sorted(run_id for ids in transactions for run_id in ids) == sorted(waiting)
        assert context.runs.unsaved() == late
        assert writer.write_unsaved(batch=2, until_empty=False) == 1
        assert context.runs.unsaved() == []
    assert context.store.count_runs() == 6


@pytest.mark.parametrize("until_empty", [False, True])
def test_a_write_takes_the_runs_of_a_worker_whose_clock_is_ahead(
    make_context: Callable[..., Context], redis_conn: Redis, until_empty: bool
) -> None:
    """A run's place in the unsaved set is its worker's time: a worker whose clock runs a minute
    ahead still has its runs written by the next write, not a minute later."""
    context = make_context(PACKAGE)
    run_ids = end_runs_unwritten(context, 2)
    redis_conn.zadd(context.keys.unsaved_runs, {run_ids[1]: time.time() + 60})
    assert RunWriter(context, "test").write_unsaved(until_empty=until_empty) == 2
    assert context.runs.unsaved() == []
    assert context.store.count_runs() == 2


def test_a_run_retried_while_it_is_written_is_written_again_as_it_ends(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """A writer reads an ended run; before it writes, the run is retried and ends again, and
    another writer stores the new end; then the first writer stores its old snapshot. Its
    mark-saved sees the run's end changed: the run goes back in the unsaved set, and the next
    write puts the new end in SQL."""
    context = make_context("tests.graphs.failing")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("c")  # c always fails
    drain(context)
    first_end = redis_conn.hget(context.keys.run(run_id), "ended_at")
    assert first_end and context.runs.unsaved() == []

    write = context.store.save_runs

    def retried_meanwhile(records: Sequence[RunRecord], *_: Any, **__: Any) -> None:
        context.store.save_runs = write  # type: ignore[method-assign]
        orchestrator.retry(run_id)
        drain(context)  # it fails again: a new end, written by the drain's worker
        write(records)  # the old snapshot, written last

    context.store.save_runs = retried_meanwhile  # type: ignore[method-assign]
    RunWriter(context, "test").write_runs([run_id])
    new_end = redis_conn.hget(context.keys.run(run_id), "ended_at")
    assert new_end != first_end
    assert context.runs.unsaved() == [run_id]  # back, to be written again
    assert RunWriter(context, "test").write_unsaved() == 1
    stored = context.store.load_run(run_id)
    assert stored is not None and stored.ended_at is not None
    assert stored.ended_at.strftime(RQ_DATE_FORMAT) == new_end.decode()  # the new end
    assert context.runs.unsaved() == []
    assert -1 not in [redis_conn.ttl(key) for key in context.keys.run_keys(run_id)]  # expiring


def test_a_run_retried_while_it_is_written_keeps_its_keys_while_it_runs(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """The writer's old snapshot is stored while the retried run still runs: its keys must not
    be set to expire (they would vanish under the running steps), and it is written as it ends."""
    context = make_context("tests.graphs.failing")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("c")
    drain(context)
    write = context.store.save_runs

    def retried_meanwhile(records: Sequence[RunRecord], *_: Any, **__: Any) -> None:
        context.store.save_runs = write  # type: ignore[method-assign]
        orchestrator.retry(run_id)
        write(records)

    context.store.save_runs = retried_meanwhile  # type: ignore[method-assign]
    RunWriter(context, "test").write_runs([run_id])
    assert orchestrator.status(run_id)["status"] == "running"
    ttls = [redis_conn.ttl(key) for key in context.keys.run_keys(run_id)]
    assert -1 in ttls and all(ttl < 0 for ttl in ttls)  # not expiring (-1), or absent (-2)
    assert context.runs.unsaved() == []
    drain(context)  # c fails again: the run ends, and is written as it ended
    stored = context.store.load_run(run_id)
    end = redis_conn.hget(context.keys.run(run_id), "ended_at")
    assert stored is not None and stored.ended_at is not None and end is not None
    assert stored.ended_at.strftime(RQ_DATE_FORMAT) == end.decode()


def test_a_long_turn_keeps_the_write_lock_and_stops_once_another_holds_it(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """A writer with many runs to write renews the write lock per batch, so it outlives its
    lifetime; once another writer holds it (it expired), this one stops after its batch, so
    that two never write the same oldest runs."""
    context = make_context(PACKAGE, replace(TUNING, write_batch=2, write_lock_ms=10_000))
    end_runs_unwritten(context, 8)
    writer = RunWriter(context, "test")
    lock = context.keys.write_lock
    seen: list[tuple[bytes | None, int]] = []  # the lock's holder and lifetime left, per batch
    write = writer.write_runs

    def batch_near_the_lock_s_end(run_ids: Sequence[str]) -> list[str]:
        seen.append((redis_conn.get(lock), redis_conn.pttl(lock)))
        redis_conn.pexpire(lock, 1_000)  # as if the batch took 9 s of its 10
        if len(seen) == 3:
            redis_conn.set(lock, "other")  # it expired and another writer took it
        return write(run_ids)

    writer.write_runs = batch_near_the_lock_s_end  # type: ignore[method-assign]
    assert writer.take_turn()
    assert [holder for holder, _ in seen] == [b"test"] * 3
    assert all(left > 1_000 for _, left in seen)  # renewed after each batch
    assert len(context.runs.unsaved()) == 2  # the fourth batch was left to the other
    assert redis_conn.get(lock) == b"other"
