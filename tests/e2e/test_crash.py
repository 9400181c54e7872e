"""Killing workers loses nothing: the steps a dead worker held run again and every run ends."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from redis import Redis

from ezgraph import recovery
from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.handover import RunWriter
from ezgraph.recovery import Report
from ezgraph.rq_compat import RQ_DATE_FORMAT, utcnow_iso

from ..conftest import ROOT, drain, ezgraph_cli, ezgraph_process, subprocess_env, wait_for


def watch_runs(context: Context, grace: float | None = None) -> Report:
    """One watchdog pass (with another grace), writing the runs it ends at once."""
    if grace is not None:
        tuning = dataclasses.replace(context.tuning, grace=grace)
        context = Context(context.settings, context.connection, tuning)
    writer = RunWriter(context, "watchdog")
    return recovery.watch_runs(context, lambda run_id: writer.write_runs([run_id]) and None)


def reap_dead_workers(context: Context, grace: float = 0.0) -> Report:
    """Give back the dead workers' claims (once silent for ``grace``: none by default), writing
    the runs that fails at once."""
    tuning = dataclasses.replace(context.tuning, grace=grace)
    context = Context(context.settings, context.connection, tuning)
    writer = RunWriter(context, "reaper")
    return recovery.recover_dead_workers(
        context, lambda run_id: writer.write_runs([run_id]) and None
    )


def start_worker(context: Context, *args: str) -> subprocess.Popen[str]:
    return ezgraph_process("worker", *args, env=subprocess_env(context.settings))


def start_stock_worker(context: Context, redis_url: str, *args: str) -> subprocess.Popen[bytes]:
    """A stock ``rq worker`` with ``args`` (queues and options), in the context's environment."""
    return subprocess.Popen(
        [sys.executable, "-m", "rq.cli", "worker", "--url", redis_url, *args],
        env=subprocess_env(context.settings),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_steps_claimed_by_a_sigkilled_worker_are_requeued_by_a_survivor(
    make_context: Callable[..., Context], redis_conn: Redis, redis_url: str
) -> None:
    context = make_context("tests.graphs.slowchain")
    orchestrator = GraphOrchestrator(context=context)
    ledger = "test:ledger"
    run_ids = [
        orchestrator.submit("a", ledger_url=redis_url, ledger_key=ledger, sleep=0.3)
        for _ in range(6)
    ]
    doomed = start_worker(context)
    survivor = start_worker(context)
    try:
        claimed = "ezgraph:claimed:*"
        wait_for(lambda: len(redis_conn.keys(claimed)) == 2, 20, "both workers to claim a step")
        victims = {key: redis_conn.lrange(key, 0, -1) for key in redis_conn.keys(claimed)}
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.communicate(timeout=10)
        killed_at = time.monotonic()
        wait_for(
            lambda: all(orchestrator.status(r)["status"] == "finished" for r in run_ids),
            60,
            "every run to finish",
        )
        assert time.monotonic() - killed_at < 30
    finally:
        survivor.send_signal(signal.SIGTERM)
        _, errors = survivor.communicate(timeout=30)
        if doomed.poll() is None:
            doomed.kill()
            doomed.communicate()
    assert survivor.returncode == 0, errors
    assert len(victims) == 2 and all(len(ids) >= 1 for ids in victims.values())
    executions = Counter(e.decode() for e in redis_conn.lrange(ledger, 0, -1))
    assert set(executions) == {f"{r}:{s}" for r in run_ids for s in "abc"}
    # At-least-once: only steps a worker held when the other was killed may have run twice.
    held = sum(len(ids) for ids in victims.values())
    assert sum(executions.values()) - len(executions) <= held
    assert redis_conn.keys(claimed) == []
    stored = [context.store.load_run(r) for r in run_ids]
    assert all(s is not None and s.status == "finished" for s in stored)


def kill_tree(pid: int) -> None:
    subprocess.run(["pkill", "-KILL", "-P", str(pid)], check=False)
    os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("worker_class", ["rq.worker.Worker", "rq.worker.SimpleWorker"])
def test_a_dead_stock_rq_worker_s_step_runs_again_within_10_seconds(
    make_context: Callable[..., Context], redis_conn: Redis, redis_url: str, worker_class: str
) -> None:
    """Parent and work-horse SIGKILLed, as when a machine dies; an ezgraph worker rescues."""
    context = make_context("tests.graphs.slowchain")
    orchestrator = GraphOrchestrator(context=context)
    ledger = "test:ledger"
    run_id = orchestrator.submit("a", ledger_url=redis_url, ledger_key=ledger, sleep=2.0)
    stock = start_stock_worker(context, redis_url, "a", "-w", worker_class)
    rescuer = start_worker(context, "b", "c")  # serves the rest; its duties run the watchdog
    try:
        wait_for(lambda: redis_conn.llen(ledger) == 1, 30, "the stock worker to start step a")
        kill_tree(stock.pid)
        stock.wait(10)
        killed_at = time.monotonic()
        # Only the rescuer is left, and it does not serve queue a: a new stock worker does.
        replacement = start_stock_worker(context, redis_url, "a", "-w", "rq.worker.SimpleWorker")
        try:
            recovery = wait_for(lambda: redis_conn.llen(ledger) >= 2, 30, "step a to run again")
            wait_for(
                lambda: orchestrator.status(run_id)["status"] == "finished", 30, "the run to end"
            )
        finally:
            replacement.terminate()
            replacement.wait(10)
    finally:
        rescuer.send_signal(signal.SIGTERM)
        rescuer.communicate(timeout=30)
        if stock.poll() is None:
            kill_tree(stock.pid)
    assert time.monotonic() - killed_at >= recovery
    assert recovery < 10, f"recovery took {recovery:.1f}s"
    executions = [e.decode() for e in redis_conn.lrange(ledger, 0, -1)]
    assert executions.count(f"{run_id}:a") == 2
    assert executions.count(f"{run_id}:b") == executions.count(f"{run_id}:c") == 1
    stored = context.store.load_run(run_id)
    assert stored is not None and stored.status == "finished"


@pytest.mark.slow
def test_a_live_stock_worker_s_long_step_is_left_alone_whatever_its_clock(
    make_context: Callable[..., Context], redis_conn: Redis, redis_url: str
) -> None:
    """A step longer than the watchdog's grace on a live stock worker whose clock is a minute
    behind the watchdog's. While the step has no heartbeat (removed here) its RQ start date
    looks a minute old: the watchdog, timing a step that looks lost by Redis's clock
    from when it first looked so, only suspects it. Then the worker's process beats
    for it, so the watchdog does not take it for a lost step and run it again."""
    context = make_context("tests.graphs.slowchain")
    orchestrator = GraphOrchestrator(context=context)
    ledger = "test:ledger"
    run_id = orchestrator.submit("a", ledger_url=redis_url, ledger_key=ledger, sleep=3.5)
    job_id = f"{run_id}-a"
    stock = start_stock_worker(context, redis_url, "a", "--burst", "-w", "rq.worker.SimpleWorker")
    try:
        wait_for(lambda: redis_conn.llen(ledger) == 1, 30, "the stock worker to start step a")
        started = time.monotonic()
        worker = redis_conn.hget(f"rq:job:{job_id}", "worker_name")
        assert worker
        # As if its first beat had not happened yet (or expired while Redis stood still).
        redis_conn.delete(f"ezgraph:alive:{worker.decode()}")
        a_minute_ago = datetime.now(UTC) - timedelta(minutes=1)
        redis_conn.hset(f"rq:job:{job_id}", "started_at", a_minute_ago.strftime(RQ_DATE_FORMAT))
        redis_conn.zadd("ezgraph:runs:live", {run_id: time.time() - 10})  # older than the grace
        first = watch_runs(context)
        assert first.suspected == [job_id] and first.requeued == []  # no heartbeat yet
        time.sleep(2.5)  # past the grace since it first looked lost
        assert redis_conn.exists(f"ezgraph:alive:{worker.decode()}") == 1
        later = watch_runs(context)
        assert later.suspected == [] and later.requeued == []
        assert time.monotonic() - started < 3.5, "the step ended before the watchdog looked"
        assert stock.wait(30) == 0
    finally:
        if stock.poll() is None:
            kill_tree(stock.pid)
    assert redis_conn.lrange(ledger, 0, -1) == [f"{run_id}:a".encode()]
    assert orchestrator.status(run_id)["nodes"]["a"] == "finished"


@pytest.mark.slow
def test_a_killed_work_horse_s_step_runs_again(
    make_context: Callable[..., Context], redis_conn: Redis, redis_url: str
) -> None:
    """Only the work-horse dies (OOM, segfault): RQ fails the job, ezgraph runs the step again."""
    context = make_context("tests.graphs.slowchain")
    orchestrator = GraphOrchestrator(context=context)
    ledger = "test:ledger"
    run_id = orchestrator.submit("a", ledger_url=redis_url, ledger_key=ledger, sleep=2.0)
    stock = start_stock_worker(context, redis_url, "a")
    rescuer = start_worker(context, "b", "c")
    try:
        wait_for(lambda: redis_conn.llen(ledger) == 1, 30, "the work-horse to start step a")
        subprocess.run(["pkill", "-KILL", "-P", str(stock.pid)], check=True)  # the horse only
        wait_for(lambda: redis_conn.llen(ledger) >= 2, 30, "step a to run again")
        wait_for(lambda: orchestrator.status(run_id)["status"] == "finished", 30, "the run")
    finally:
        rescuer.send_signal(signal.SIGTERM)
        rescuer.communicate(timeout=30)
        stock.terminate()
        stock.wait(10)
    executions = [e.decode() for e in redis_conn.lrange(ledger, 0, -1)]
    assert executions.count(f"{run_id}:a") == 2
    assert executions.count(f"{run_id}:c") == 1
    assert orchestrator.status(run_id)["steps"][0]["status"] == "finished"


def test_a_step_lost_from_its_queue_is_pushed_back(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """A stock worker on several queues pops with a bare BLPOP: a kill right after loses the job."""
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a")
    assert redis_conn.lpop("rq:queue:a") == f"{run_id}-a".encode()  # popped, then the pop died
    redis_conn.zadd("ezgraph:runs:live", {run_id: time.time() - 10})  # older than the grace
    assert watch_runs(context).requeued == []  # first sighting: a suspect, not yet acted on
    # Another watchdog's pass a moment later (passes of `ezgraph reap --loop` and of the
    # workers' duties do not wait for each other): it has not looked lost for the grace yet.
    assert watch_runs(context).suspected == [f"{run_id}-a"]
    time.sleep(0.3)
    assert watch_runs(context, grace=0.25).requeued == [f"{run_id}-a"]
    assert redis_conn.lrange("rq:queue:a", 0, -1) == [f"{run_id}-a".encode()]
    drain(context)
    assert orchestrator.status(run_id)["status"] == "finished"


def test_one_ezgraph_reap_looks_twice_to_push_back_a_lost_step(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """`ezgraph reap` without --loop: the step it finds lost is pushed back by its second look,
    once it has looked lost for the grace."""
    context = make_context("tests.graphs.chain")
    run_id = GraphOrchestrator(context=context).submit("a")
    assert redis_conn.lpop("rq:queue:a") == f"{run_id}-a".encode()
    redis_conn.zadd("ezgraph:runs:live", {run_id: time.time() - 10})
    done = ezgraph_cli("reap", env=subprocess_env(context.settings))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "requeued 1 steps, failed 0 lost steps"
    assert redis_conn.lrange("rq:queue:a", 0, -1) == [f"{run_id}-a".encode()]


def test_the_watchdog_pushes_back_only_the_lost_step_of_many_waiting(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """One pass looks at every waiting step at once: a step in its queue, in the queue's
    intermediate list (a stock worker's dequeue) or in an ezgraph worker's claimed list is
    waiting; only the one in no list is lost."""
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    run_ids = [orchestrator.submit("a") for _ in range(6)]
    jobs = [f"{run_id}-a" for run_id in run_ids]
    for job in jobs[1:4]:
        assert redis_conn.lrem("rq:queue:a", 0, job) == 1
    redis_conn.rpush("rq:queue:a:intermediate", jobs[1])
    redis_conn.sadd("ezgraph:workers", "other-worker")
    redis_conn.rpush("ezgraph:claimed:other-worker", jobs[2])
    redis_conn.zadd("ezgraph:runs:live", {run_id: time.time() - 10 for run_id in run_ids})

    assert watch_runs(context).suspected == [jobs[3]]  # first sighting: not yet acted on
    time.sleep(0.3)
    assert watch_runs(context, grace=0.25).requeued == [jobs[3]]
    assert redis_conn.lrange("rq:queue:a", 0, -1) == [
        job.encode() for job in (jobs[3], jobs[0], jobs[4], jobs[5])
    ]


@pytest.mark.slow
def test_a_step_that_kills_its_ezgraph_worker_fails_after_four_deaths(
    make_context: Callable[..., Context], redis_conn: Redis, redis_url: str
) -> None:
    """A module that kills the process running it (an OOM kill, a segfault) is not run forever.
    The first death gives back the dead worker's whole claimed batch; each of its jobs is then
    claimed alone, so later deaths count against the job that causes them, and the step whose
    workers died running it 4 times fails, and so does its run. The batch's other runs finish."""
    context = make_context("tests.graphs.poison")
    orchestrator = GraphOrchestrator(context=context)
    ledger = "test:ledger"
    doomed = orchestrator.submit("a", ledger_url=redis_url, ledger_key=ledger, doomed=True)
    fine = [orchestrator.submit("a", ledger_url=redis_url, ledger_key=ledger) for _ in range(2)]
    for death in range(1, 5):
        worker = start_worker(context, "--burst")
        _, errors = worker.communicate(timeout=60)
        assert worker.returncode == -signal.SIGKILL, errors
        # Its liveness key would expire within seconds, and a survivor's next pass reap it.
        redis_conn.delete(*redis_conn.keys("ezgraph:alive:*"))
        report = reap_dead_workers(context)
        if death == 1:  # the batch: the doomed run's step b and the two that waited behind it
            assert sorted(report.requeued) == sorted(f"{r}-b" for r in [doomed, *fine])
        else:
            assert report.requeued == ([f"{doomed}-b"] if death < 4 else [])
        assert report.failed == ([f"{doomed}-b"] if death == 4 else [])
    worker = start_worker(context, "--burst")
    _, errors = worker.communicate(timeout=60)
    assert worker.returncode == 0, errors

    status = orchestrator.status(doomed)
    assert status["status"] == "failed"
    assert status["error"] == "b: its worker process died running it 4 times"
    assert all(orchestrator.status(r)["status"] == "finished" for r in fine)
    executions = Counter(e.decode() for e in redis_conn.lrange(ledger, 0, -1))
    assert executions == {f"{doomed}:a": 1, f"{doomed}:b": 4} | {
        f"{r}:{s}": 1 for r in fine for s in "ab"
    }
    assert redis_conn.hget(f"rq:job:{doomed}-b", "status") == b"failed"
    stored = context.store.load_run(doomed)
    assert stored is not None and stored.status == "failed"


def test_a_step_whose_stock_worker_keeps_dying_fails_after_four_deaths(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """The watchdog's side of the same bound: a started step whose stock worker died (no
    heartbeat, no ezgraph liveness key) is requeued 3 times; the 4th death fails it."""
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a")
    job_id = f"{run_id}-a"
    redis_conn.zadd("ezgraph:runs:live", {run_id: time.time() - 10})  # older than the grace
    for death in range(1, 5):
        # A stock worker pops the job, marks it started, and its machine goes away.
        assert redis_conn.lpop("rq:queue:a") == job_id.encode()
        redis_conn.hset(
            f"rq:job:{job_id}",
            mapping={
                "status": "started",
                "worker_name": f"gone-{death}",
                "started_at": utcnow_iso(),
            },
        )
        assert watch_runs(context).suspected == [job_id]
        time.sleep(0.3)
        report = watch_runs(context, grace=0.25)
        assert (report.requeued, report.failed) == (([job_id], []) if death < 4 else ([], [job_id]))
    status = orchestrator.status(run_id)
    assert status["status"] == "failed"
    assert status["error"] == "a: its worker process died running it 4 times"


def test_the_watchdog_does_not_requeue_a_step_that_failed_meanwhile(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """Between a pass's read of a run's steps and its requeue, the step may fail for good: the
    requeue checks that the run still waits for the step, not only its RQ job's status."""
    context = make_context("tests.graphs.failing")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("c")
    drain(context)  # c fails for good: its RQ job is failed, and so are its step and run
    assert redis_conn.hget(f"rq:job:{run_id}-c", "status") == b"failed"
    assert orchestrator.status(run_id)["status"] == "failed"
    # What a pass that read the step as waiting a moment before would ask:
    assert context.runs.requeue_step(run_id, f"{run_id}-c", "c", "failed") is False
    assert redis_conn.llen("rq:queue:c") == 0


@pytest.mark.slow
def test_a_worker_whose_write_to_sql_waits_on_a_lock_is_not_taken_for_dead(
    make_context: Callable[..., Context], redis_conn: Redis, redis_url: str, sqlite_url: str
) -> None:
    """A busy ezgraph worker writes ended runs from its duties thread. With the database locked
    for longer than a worker's liveness lasts (5 s), its heartbeat, in a thread of its own,
    goes on: no other worker reaps it, so none of its claimed steps runs twice."""
    context = make_context("tests.graphs.slowchain")
    context.store.create_schema()
    orchestrator = GraphOrchestrator(context=context)
    ledger = "test:ledger"
    run_ids = [
        orchestrator.submit("a", ledger_url=redis_url, ledger_key=ledger, sleep=0.02)
        for _ in range(150)
    ]
    lock = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # the database is locked (a long transaction elsewhere)
    worker = start_worker(context)
    try:
        wait_for(lambda: context.runs.unsaved_count() > 0, 30, "a run to end")
        name = next(iter(redis_conn.smembers("ezgraph:workers"))).decode()
        locked_until = time.monotonic() + 8
        while time.monotonic() < locked_until:
            assert redis_conn.exists(f"ezgraph:alive:{name}"), "the worker looked dead"
            assert reap_dead_workers(context).requeued == []
            time.sleep(0.25)
        assert context.runs.unsaved_count() > 0  # the write was still waiting on the lock
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    try:
        wait_for(lambda: context.store.count_runs() == len(run_ids), 60, "every run to reach SQL")
    finally:
        worker.send_signal(signal.SIGTERM)
        _, errors = worker.communicate(timeout=30)
    assert worker.returncode == 0, errors
    executions = Counter(e.decode() for e in redis_conn.lrange(ledger, 0, -1))
    assert len(executions) == 3 * len(run_ids) and set(executions.values()) == {1}


def test_a_dead_worker_s_claim_already_back_in_its_queue_is_not_pushed_twice(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """A job the watchdog (or RQ's retry) put back in its queue while a worker's claimed list
    still held it: giving back the dead worker's claims leaves it in its queue once."""
    context = make_context("tests.graphs.chain")
    run_id = GraphOrchestrator(context=context).submit("a")
    job_id = f"{run_id}-a"
    redis_conn.sadd("ezgraph:workers", "gone-worker")  # no liveness key: it is dead
    redis_conn.rpush("ezgraph:claimed:gone-worker", job_id)
    assert reap_dead_workers(context).requeued == []
    assert redis_conn.lrange("rq:queue:a", 0, -1) == [job_id.encode()]
    assert redis_conn.exists("ezgraph:claimed:gone-worker") == 0
    drain(context)
    assert GraphOrchestrator(context=context).status(run_id)["status"] == "finished"
