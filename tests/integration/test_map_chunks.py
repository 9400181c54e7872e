"""A map's instances are created a chunk per call, and a creation cut short goes on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job

from ezgraph.client import GraphOrchestrator
from ezgraph.completion import Attempt, StepRun, create_map
from ezgraph.context import Context
from ezgraph.handover import RunWriter
from ezgraph.model.step_job import StepJob
from ezgraph.recovery import resume_maps, resume_sweeps, watch_runs
from ezgraph.settings import TUNING
from ezgraph.state import runs as runs_module
from ezgraph.state.live import record_from_live

from ..conftest import drain, simple_worker_burst

MAPPED = "tests.graphs.mapped"
SMALL_CHUNKS = replace(TUNING, map_chunk=7, grace=0.0)


def assert_ran_in_order(context: Context, run_id: str, count: int) -> None:
    status = GraphOrchestrator(context=context).status(run_id)
    assert status["status"] == "finished"
    assert status["result"]["values"] == [i * i for i in range(count)]
    stored = context.store.load_run(run_id)
    assert stored is not None
    assert [s.step for s in stored.steps] == ["m", "square"] + [
        f"square-{i}" for i in range(count)
    ] + ["collect"]


def no_map_left(context: Context, redis_conn: Redis, run_id: str) -> bool:
    staged = list(redis_conn.scan_iter(context.keys.map_items(run_id, "*")))
    return not staged and redis_conn.zcard(context.keys.maps_creating) == 0


@pytest.mark.parametrize("count", [7, 50])
def test_a_map_wider_than_a_chunk_runs_every_item_once_in_order(
    make_context: Callable[..., Context], redis_conn: Redis, count: int
) -> None:
    context = make_context(MAPPED, SMALL_CHUNKS)
    run_id = GraphOrchestrator(context=context).submit("m", items=list(range(count)))
    drain(context)
    assert_ran_in_order(context, run_id, count)
    assert no_map_left(context, redis_conn, run_id)
    kept = {name.decode() for name in redis_conn.hkeys(context.keys.state(run_id))}
    assert kept == {"m", "collect"}  # no instance's state: nothing reads it


@pytest.mark.parametrize("worker", ["ezgraph", "stock"])
def test_instances_read_their_mapper_s_state_and_their_jobs_carry_only_their_item(
    make_context: Callable[..., Context],
    redis_conn: Redis,
    monkeypatch: pytest.MonkeyPatch,
    worker: str,
) -> None:
    context = make_context(MAPPED, SMALL_CHUNKS)
    run_id = GraphOrchestrator(context=context).submit("m", items=[1, 2, 3], scale=10)
    if worker == "ezgraph":
        drain(context)
    else:
        simple_worker_burst(context, redis_conn, monkeypatch, ["m", "square", "collect"])
        RunWriter(context, "test").write_runs([run_id])
    status = GraphOrchestrator(context=context).status(run_id)
    assert status["result"]["values"] == [10, 40, 90]  # scale came from the mapper's state
    kwargs = Job.fetch(f"{run_id}-square-2", redis_conn).kwargs
    assert kwargs["item"] == 3 and kwargs["mapper_state"] is True and "state" not in kwargs
    # The join passes on what it returns, not the list it gathered.
    assert "square" not in status["result"] and status["result"]["scale"] == 10


def test_a_wide_hash_is_read_a_chunk_per_call_as_one_hgetall_reads_it(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context(MAPPED)
    redis_conn.hset("wide", mapping={f"f{n}": n for n in range(25)})
    redis_conn.hset("narrow", "a", "1")
    wide, narrow, missing = context.runs.read_hashes(["wide", "narrow", "missing"], chunk=4)
    assert wide == {f"f{n}": str(n) for n in range(25)}
    assert (narrow, missing) == ({"a": "1"}, {})


def test_a_stock_worker_creates_the_chunks_too(
    make_context: Callable[..., Context], redis_conn: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = make_context(MAPPED, SMALL_CHUNKS)
    run_id = GraphOrchestrator(context=context).submit("m", items=list(range(30)))
    simple_worker_burst(context, redis_conn, monkeypatch, ["m", "square", "collect"])
    RunWriter(context, "test").write_runs([run_id])
    assert_ran_in_order(context, run_id, 30)


def test_a_creation_cut_short_by_a_dead_worker_is_resumed_by_the_watchdog(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """The mapper's worker died after recording the Map (its first chunk created): the
    watchdog creates the rest; the run does not end before every instance exists."""
    context = make_context(MAPPED, SMALL_CHUNKS)
    run_id = GraphOrchestrator(context=context).submit("m", items=list(range(40)))
    redis_conn.delete("rq:queue:m")
    step = StepRun(
        context, StepJob(run_id, "m", MAPPED, state={"items": list(range(40))}), Attempt.of(None)
    )
    outcome = context.runs.complete(step.call())  # recorded; its worker dies before settle()
    assert outcome.status == "ok"
    assert redis_conn.llen("rq:queue:square") == 7
    assert redis_conn.zcard(context.keys.maps_creating) == 1
    drain(context)  # the 7 instances run; the run waits for the other 33
    status = GraphOrchestrator(context=context).status(run_id)
    assert status["status"] == "running" and redis_conn.llen("rq:queue:collect") == 0
    writer = RunWriter(context, "test")
    report = resume_maps(context, lambda ended: writer.write_runs([ended]) and None)
    assert report.maps_resumed == [f"{run_id}/square"]
    assert redis_conn.llen("rq:queue:square") == 33
    drain(context)
    assert_ran_in_order(context, run_id, 40)
    assert no_map_left(context, redis_conn, run_id)
    assert resume_maps(context, lambda ended: None).maps_resumed == []


def test_a_map_of_a_run_canceled_meanwhile_stops_and_the_run_ends(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context(MAPPED, SMALL_CHUNKS)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("m", items=list(range(40)))
    redis_conn.delete("rq:queue:m")
    step = StepRun(
        context, StepJob(run_id, "m", MAPPED, state={"items": list(range(40))}), Attempt.of(None)
    )
    context.runs.complete(step.call())
    context.runs.cancel(run_id, "canceled by a test")
    ended: list[str] = []
    resume_maps(context, ended.append)
    assert ended == [run_id]
    assert redis_conn.llen("rq:queue:square") == 0  # the first chunk canceled, no more made
    assert no_map_left(context, redis_conn, run_id)


@pytest.mark.parametrize("wide", [False, True])
def test_the_watchdog_looks_at_a_wide_run_s_first_waiting_steps_only(
    make_context: Callable[..., Context],
    redis_conn: Redis,
    monkeypatch: pytest.MonkeyPatch,
    wide: bool,
) -> None:
    """A pass costs the same whatever the width: the lowest-indexed waiting steps (here lost:
    queued in no list) are looked at, the others in a later pass, once those ended. A wide
    run's steps hash is not read whole: a window from the lowest instance not yet ended."""
    if wide:
        monkeypatch.setattr(runs_module, "BIG_HASH", 10)
    context = make_context(MAPPED, replace(TUNING, watch_steps=5, grace=0.0))
    run_id = GraphOrchestrator(context=context).submit("m", items=list(range(12)))
    redis_conn.delete("rq:queue:m")
    state = {"items": list(range(12))}
    step = StepRun(context, StepJob(run_id, "m", MAPPED, state=state), Attempt.of(None))
    context.runs.complete(step.call())
    redis_conn.delete("rq:queue:square")  # every instance's job lost
    report = watch_runs(context, lambda ended: None)
    assert report.requeued == [f"{run_id}-square-{i}" for i in range(5)]
    steps = context.keys.steps(run_id)
    redis_conn.hset(steps, mapping={f"square-{i}.status": "finished" for i in range(3)})
    redis_conn.delete("rq:queue:square")
    report = watch_runs(context, lambda ended: None)
    assert report.requeued == [f"{run_id}-square-{i}" for i in range(3, 8)]
    low = redis_conn.hget(context.keys.join(run_id), "watchlow:square")
    assert low == (b"3" if wide else None)


def test_a_wide_run_is_handed_over_a_chunk_of_steps_per_transaction(
    make_context: Callable[..., Context], monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """A wide run's steps go to SQL in chunks (the writer never holds the whole map); the run
    reads back as a narrow one does, step rows past its count (an earlier, wider end's) are
    deleted, and writing it again changes nothing."""
    monkeypatch.setattr(runs_module, "BIG_HASH", 10)
    tuning = replace(SMALL_CHUNKS, write_steps_chunk=4)
    context = make_context(MAPPED, tuning, database_url=database_url)
    run_id = GraphOrchestrator(context=context).submit("m", items=list(range(30)))
    drain(context)  # the run ends; the worker's writer wrote it
    assert context.runs.wide_runs([run_id]) == {run_id}
    live = context.runs.read_wide(run_id)
    assert live is not None and live.steps == {}
    chunks = list(context.runs.wide_steps(live, 4))
    assert [len(c) for c in chunks] == [1, 1, 4, 4, 4, 4, 4, 4, 4, 2, 1]
    stale = replace(chunks[-1][0], step="square-99", node="square", index=99)
    context.store.save_steps(run_id, 99, [stale])  # as left by an earlier end of 100 items
    assert RunWriter(context, "test").write_runs([run_id]) == [run_id]
    assert_ran_in_order(context, run_id, 30)
    [whole] = context.runs.read_many([run_id])
    assert whole is not None
    assert [s for c in chunks for s in c] == list(record_from_live(whole, encoded=True).steps)


SWEEP = replace(TUNING, sweep_chunk=7, lrem_max=5, grace=0.0)


def queued_map(context: Context, items: list[object]) -> str:
    """A run of ``m`` whose mapper ran: its instances wait in ``rq:queue:square``."""
    run_id = GraphOrchestrator(context=context).submit("m", items=items)
    context.connection.delete("rq:queue:m")
    step = StepRun(context, StepJob(run_id, "m", MAPPED, state={"items": items}), Attempt.of(None))
    assert context.runs.complete(step.call()).status == "ok"
    create_map(context, run_id, "square", lambda _: None)  # as the mapper's worker goes on
    return run_id


def test_a_wide_run_is_canceled_a_chunk_of_jobs_per_call_and_its_long_queue_is_drained(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """Canceling a wide map's run sweeps its jobs ``sweep_chunk`` per call (the run ends with
    the last); ids canceled in a queue longer than ``lrem_max`` stay there, and the worker
    that claims them drops them unrun."""
    context = make_context(MAPPED, SWEEP)
    run_id = queued_map(context, list(range(600)))  # a jobs hash past listpack's 512
    outcome = context.runs.cancel(run_id, "run canceled")
    assert outcome.status == "ok" and not outcome.run_ended  # one chunk swept
    assert context.runs.runs_sweeping() == [run_id]
    calls = 0
    more = True
    while more:
        more, ended = context.runs.sweep(run_id)
        calls += 1
    assert ended and calls >= 600 // 7 // 2  # HSCAN's COUNT is a hint
    assert context.runs.runs_sweeping() == []
    steps = context.runs.read_steps([run_id])[0]
    assert {steps[f"square-{i}"]["status"] for i in range(600)} == {"canceled"}
    assert redis_conn.llen("rq:queue:square") == 600  # left in the long queue
    drain(context)
    assert redis_conn.llen("rq:queue:square") == 0
    assert Queue("square", connection=redis_conn).finished_job_registry.count == 0
    stored = context.store.load_run(run_id)
    assert stored is not None and stored.status == "canceled"


def test_a_stock_worker_does_not_run_a_canceled_job_left_in_a_long_queue(
    make_context: Callable[..., Context], redis_conn: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = make_context(MAPPED, SWEEP)
    run_id = queued_map(context, list(range(12)))
    GraphOrchestrator(context=context).cancel(run_id)
    assert redis_conn.llen("rq:queue:square") == 12
    simple_worker_burst(context, redis_conn, monkeypatch, ["square"])
    assert redis_conn.llen("rq:queue:square") == 0
    results = [Job.fetch(f"{run_id}-square-{i}", redis_conn).return_value() for i in range(12)]
    assert results == [{}] * 12  # run_step returned at once: square never ran


def test_a_wide_run_that_fails_is_swept_by_the_watchdog_and_ends_failed(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """An instance fails: the call recording it stops the run and sweeps a chunk; the
    watchdog sweeps the rest; every instance ends, the run ends failed and lands in SQL."""
    context = make_context(MAPPED, SWEEP)
    run_id = queued_map(context, ["boom", *range(1, 600)])  # "boom" ** 2 raises
    drain(context)
    writer = RunWriter(context, "test")
    resume_sweeps(context, lambda ended: writer.write_runs([ended]) and None)
    assert context.runs.runs_sweeping() == []
    steps = context.runs.read_steps([run_id])[0]
    statuses = [steps[f"square-{i}"]["status"] for i in range(600)]
    assert statuses[0] == "failed" and "canceled" in statuses
    assert set(statuses) <= {"failed", "canceled", "finished"}
    stored = context.store.load_run(run_id)
    assert stored is not None and stored.status == "failed"


def test_a_retry_requeues_a_job_left_in_its_queue_in_place_not_twice(
    make_context: Callable[..., Context], redis_conn: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wide run fails; its instances, canceled, stay listed in their long queue. Retried,
    each runs once: a job still listed is requeued where it is, not pushed again."""
    context = make_context(MAPPED, SWEEP)
    # 1,200: the stock worker's process has the default tuning (its queue longer than lrem_max)
    run_id = queued_map(context, ["boom", *range(1, 1_200)])
    simple_worker_burst(context, redis_conn, monkeypatch, ["square"], max_jobs=1)
    writer = RunWriter(context, "test")
    resume_sweeps(context, lambda ended: writer.write_runs([ended]) and None)
    assert GraphOrchestrator(context=context).status(run_id)["status"] == "failed"
    assert redis_conn.llen("rq:queue:square") == 1_199  # canceled, left listed
    GraphOrchestrator(context=context).retry(run_id)
    listed = redis_conn.lrange("rq:queue:square", 0, -1)
    assert len(listed) == len(set(listed)) == 1_200
    assert redis_conn.hget(f"rq:job:{run_id}-square-1", "status") == b"queued"


def test_a_wide_run_is_retried_a_chunk_per_call_and_a_job_it_cannot_requeue_fails_it(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """Retrying a wide run requeues its steps ``sweep_chunk`` per call: the canceled instances
    run again and the run ends as they do. A job gone from Redis stops the retry: the run
    fails again, naming it, and what was requeued is canceled."""
    context = make_context(MAPPED, SWEEP)
    orchestrator = GraphOrchestrator(context=context)
    run_id = queued_map(context, ["boom", *range(1, 600)])
    drain(context)
    writer = RunWriter(context, "test")
    resume_sweeps(context, lambda ended: writer.write_runs([ended]) and None)
    first = context.runs.read_steps([run_id])[0]
    canceled = [i for i in range(600) if first[f"square-{i}"]["status"] == "canceled"]
    assert canceled and orchestrator.status(run_id)["status"] == "failed"
    assert context.runs.resume(run_id).status == "ok"
    assert context.runs.runs_sweeping() == [run_id]  # one chunk requeued (past listpack's 512)
    resume_sweeps(context, lambda ended: None)  # the watchdog goes on (the client would)
    drain(context)  # square-0 fails again: the run stops, its sweep a chunk...
    resume_sweeps(context, lambda ended: writer.write_runs([ended]) and None)  # ...the rest
    again = context.runs.read_steps([run_id])[0]
    assert again["square-0"]["status"] == "failed"
    assert all(again[f"square-{i}"]["status"] == "finished" for i in canceled)
    assert orchestrator.status(run_id)["status"] == "failed"
    # Again, with the failed instance's job gone: the retry stops there.
    redis_conn.delete(f"rq:job:{run_id}-square-0")
    orchestrator.retry(run_id)
    status = orchestrator.status(run_id)
    assert status["status"] == "failed"
    assert "square-0: cannot be retried: its job is expired" in status["error"]
    drain(context)
    last = context.runs.read_steps([run_id])[0]
    assert "queued" not in {last[f"square-{i}"]["status"] for i in range(600)}
