"""Hand-over of ended runs to SQL by ezgraph workers: one writer at a time, nothing left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import pytest
from redis import Redis
from rq import Queue

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Runtime, StepInput
from ezgraph.model.records import RunRecord
from ezgraph.state.runs import RQ_DATE_FORMAT
from ezgraph.step import execute_step
from ezgraph.workers.fast import Duties, FastWorker, save_ended
from ezgraph.workers.stock import Companion, writer_key

from .conftest import ROOT, drain, subprocess_env, wait_for

PACKAGE = "tests.graphs.chain"


def nobody_writes(run_id: str) -> None:
    """The run's worker died before writing it."""


def end_runs_unwritten(runtime: Runtime, count: int) -> list[str]:
    """Runs of a -> b that ended in Redis and were not written to SQL (the only ones waiting)."""
    run_ids = end_runs_unwritten_more(runtime, count)
    assert sorted(runtime.book.unsaved()) == sorted(run_ids)
    return run_ids


def end_runs_unwritten_more(runtime: Runtime, count: int) -> list[str]:
    """``count`` more runs of a -> b that ended in Redis and were not written to SQL."""
    orchestrator = GraphOrchestrator(runtime=runtime)
    run_ids = [orchestrator.submit("a", {"trail": []}) for _ in range(count)]
    for run_id in run_ids:
        state: dict[str, object] = {"trail": []}
        for node in ("a", "b"):
            state = execute_step(
                runtime, None, run_id, node, PACKAGE, StepInput(state=state), save=nobody_writes
            )
    return run_ids


def test_a_held_write_lock_makes_a_worker_wait_and_write_everything_once_free(
    make_runtime: Callable[..., Runtime], redis_conn: Redis
) -> None:
    runtime = make_runtime(PACKAGE)
    run_ids = end_runs_unwritten(runtime, 3)
    lock = f"{runtime.settings.key_prefix}:lock:persist"
    redis_conn.set(lock, "another-worker", px=60_000)

    assert save_ended(runtime, "this-worker") is False  # another worker is writing
    assert runtime.store.count_runs() == 0

    worker = FastWorker(
        [Queue(n, connection=redis_conn) for n in ("a", "b")],
        connection=redis_conn,
        runtime=runtime,
    )
    duties = Duties(worker, with_scheduler=False)
    duties.start()
    try:
        duties.write_soon()  # what a busy worker asks for
        time.sleep(0.2)  # it asks for the lock every 20 ms meanwhile
        assert runtime.store.count_runs() == 0
        redis_conn.delete(lock)
        # Within a second: sooner than the once-a-second sweep, which leaves runs younger than
        # 2 s to the worker that ended them.
        wait_for(lambda: runtime.store.count_runs() == 3, 1.0, "the runs to be written")
    finally:
        duties.stop()
    assert runtime.book.unsaved() == []
    assert redis_conn.exists(lock) == 0  # released after writing
    stored = [runtime.store.load_run(r) for r in run_ids]
    assert all(run is not None and run.status == "finished" for run in stored)


def test_a_write_asked_for_while_one_is_finishing_is_not_absorbed_by_it(
    make_runtime: Callable[..., Runtime], redis_conn: Redis
) -> None:
    """The busy worker asks again while the duties thread finishes a write (runs ended after
    its last read of Redis): that request gets a write of its own, not the sweep's 2 s later."""
    runtime = make_runtime(PACKAGE)
    first = end_runs_unwritten(runtime, 2)
    worker = FastWorker(
        [Queue(n, connection=redis_conn) for n in ("a", "b")],
        connection=redis_conn,
        runtime=runtime,
    )
    duties = Duties(worker, with_scheduler=False)
    late: list[str] = []
    save_unsaved = runtime.save_unsaved

    def write_then_more_end(
        older_than: float = 0.0, batch: int = 100, until_empty: bool = True
    ) -> int:
        written = save_unsaved(older_than=older_than, batch=batch, until_empty=until_empty)
        if older_than == 0.0 and not late:  # the write the worker asked for, finishing
            late.extend(end_runs_unwritten(runtime, 2))
            duties.write_soon()
        return written

    runtime.save_unsaved = write_then_more_end  # type: ignore[method-assign]
    duties.start()
    try:
        duties.write_soon()
        wait_for(lambda: runtime.store.count_runs() == 4, 1.0, "the late runs to be written")
    finally:
        duties.stop()
    assert runtime.book.unsaved() == []
    assert all(runtime.store.load_run(r) is not None for r in [*first, *late])


def flush_by_a_stock_worker(runtime: Runtime, run_ids: list[str]) -> None:
    """What a stock worker's companion thread does with the runs its steps ended."""
    companion = Companion(runtime)
    for run_id in run_ids:
        companion.save_later(run_id)
    companion.flush()


def test_stock_workers_leave_their_runs_to_a_following_writer(
    make_runtime: Callable[..., Runtime], redis_conn: Redis
) -> None:
    """While ``ezgraph persist --follow`` runs, a stock worker's companion leaves the runs it
    ended in Redis for it; once it has stopped, the companion writes them itself again."""
    runtime = make_runtime(PACKAGE)
    follower = subprocess.Popen(
        [sys.executable, "-m", "ezgraph", "persist", "--follow"],
        env=subprocess_env(runtime.settings),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    key = writer_key(runtime.settings.key_prefix)
    try:
        wait_for(lambda: redis_conn.exists(key) == 1, 20, "the follower to announce itself")
        follower.send_signal(signal.SIGSTOP)  # frozen: whatever gets written now is not its work
        left = end_runs_unwritten(runtime, 3)
        flush_by_a_stock_worker(runtime, left)
        assert runtime.store.count_runs() == 0
        assert sorted(runtime.book.unsaved()) == sorted(left)
        follower.send_signal(signal.SIGCONT)
        wait_for(lambda: runtime.store.count_runs() == 3, 2.0, "the follower to write them")
    finally:
        follower.send_signal(signal.SIGCONT)
        follower.terminate()
        output, _ = follower.communicate(timeout=20)
    assert follower.returncode == 0, output
    assert output.strip().splitlines()[-1] == "stopped"
    assert redis_conn.exists(key) == 0  # withdrawn on a clean stop

    flush_by_a_stock_worker(runtime, end_runs_unwritten(runtime, 2))
    assert runtime.store.count_runs() == 5
    assert runtime.book.unsaved() == []


@pytest.mark.parametrize("until_empty", [False, True])
def test_a_write_takes_the_runs_waiting_when_it_starts_or_goes_on_until_none_is_left(
    make_runtime: Callable[..., Runtime], until_empty: bool
) -> None:
    """``save_unsaved`` writes ``batch`` runs per transaction. The follower's writes
    (``until_empty=False``) take what was waiting: a run that ends meanwhile waits for the next
    write. A worker's writes go on until no run is left, that one included."""
    runtime = make_runtime(PACKAGE)
    waiting = end_runs_unwritten(runtime, 5)
    transactions: list[list[str]] = []
    late: list[str] = []
    save_runs = runtime.save_runs

    def save_while_more_end(run_ids: Sequence[str]) -> list[str]:
        transactions.append(list(run_ids))
        if not late:
            late.extend(end_runs_unwritten_more(runtime, 1))
        return save_runs(run_ids)

    runtime.save_runs = save_while_more_end  # type: ignore[method-assign]
    written = runtime.save_unsaved(batch=2, until_empty=until_empty)
    if until_empty:
        assert written == 6
        assert [len(ids) for ids in transactions] == [2, 2, 2]
        assert runtime.book.unsaved() == []
    else:
        assert written == 5
        assert [len(ids) for ids in transactions] == [2, 2, 1]
        assert sorted(run_id for ids in transactions for run_id in ids) == sorted(waiting)
        assert runtime.book.unsaved() == late
        assert runtime.save_unsaved(batch=2, until_empty=False) == 1
        assert runtime.book.unsaved() == []
    assert runtime.store.count_runs() == 6


@pytest.mark.parametrize("until_empty", [False, True])
def test_a_write_takes_the_runs_of_a_worker_whose_clock_is_ahead(
    make_runtime: Callable[..., Runtime], redis_conn: Redis, until_empty: bool
) -> None:
    """A run's place in the unsaved set is its worker's time: a worker whose clock runs a minute
    ahead still has its runs written by the next write, not a minute later."""
    runtime = make_runtime(PACKAGE)
    run_ids = end_runs_unwritten(runtime, 2)
    unsaved = f"{runtime.settings.key_prefix}:runs:unsaved"
    redis_conn.zadd(unsaved, {run_ids[1]: time.time() + 60})
    assert runtime.save_unsaved(until_empty=until_empty) == 2
    assert runtime.book.unsaved() == []
    assert runtime.store.count_runs() == 2


def test_a_run_retried_while_it_is_written_is_written_again_as_it_ends(
    make_runtime: Callable[..., Runtime], redis_conn: Redis
) -> None:
    """A writer reads an ended run; before it writes, the run is retried and ends again, and
    another writer stores the new end; then the first writer stores its old snapshot. Its
    mark-saved sees the run's end changed: the run goes back in the unsaved set, and the next
    write puts the new end in SQL."""
    runtime = make_runtime("tests.graphs.failing")
    orchestrator = GraphOrchestrator(runtime=runtime)
    run_id = orchestrator.submit("c")  # c always fails
    drain(runtime)
    first_end = redis_conn.hget(runtime.book.run_key(run_id), "ended_at")
    assert first_end and runtime.book.unsaved() == []

    write = runtime.store.save_runs

    def retried_meanwhile(records: Sequence[RunRecord]) -> None:
        runtime.store.save_runs = write  # type: ignore[method-assign]
        orchestrator.retry(run_id)
        drain(runtime)  # it fails again: a new end, written by the drain's worker
        write(records)  # the old snapshot, written last

    runtime.store.save_runs = retried_meanwhile  # type: ignore[method-assign]
    runtime.save_runs([run_id])
    new_end = redis_conn.hget(runtime.book.run_key(run_id), "ended_at")
    assert new_end != first_end
    assert runtime.book.unsaved() == [run_id]  # back, to be written again
    assert runtime.save_unsaved() == 1
    stored = runtime.store.load_run(run_id)
    assert stored is not None and stored.ended_at is not None
    assert stored.ended_at.strftime(RQ_DATE_FORMAT) == new_end.decode()  # the new end
    assert runtime.book.unsaved() == []
    assert -1 not in [redis_conn.ttl(key) for key in runtime.book.run_keys(run_id)]  # expiring


def test_a_run_retried_while_it_is_written_keeps_its_keys_while_it_runs(
    make_runtime: Callable[..., Runtime], redis_conn: Redis
) -> None:
    """The writer's old snapshot is stored while the retried run still runs: its keys must not
    be set to expire (they would vanish under the running steps), and it is written as it ends."""
    runtime = make_runtime("tests.graphs.failing")
    orchestrator = GraphOrchestrator(runtime=runtime)
    run_id = orchestrator.submit("c")
    drain(runtime)
    write = runtime.store.save_runs

    def retried_meanwhile(records: Sequence[RunRecord]) -> None:
        runtime.store.save_runs = write  # type: ignore[method-assign]
        orchestrator.retry(run_id)
        write(records)

    runtime.store.save_runs = retried_meanwhile  # type: ignore[method-assign]
    runtime.save_runs([run_id])
    assert orchestrator.status(run_id)["status"] == "running"
    ttls = [redis_conn.ttl(key) for key in runtime.book.run_keys(run_id)]
    assert -1 in ttls and all(ttl < 0 for ttl in ttls)  # not expiring (-1), or absent (-2)
    assert runtime.book.unsaved() == []
    drain(runtime)  # c fails again: the run ends, and is written as it ended
    stored = runtime.store.load_run(run_id)
    end = redis_conn.hget(runtime.book.run_key(run_id), "ended_at")
    assert stored is not None and stored.ended_at is not None and end is not None
    assert stored.ended_at.strftime(RQ_DATE_FORMAT) == end.decode()
