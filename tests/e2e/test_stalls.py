"""Nemeses of the Jepsen kind against real processes: a Redis that stalls longer than the
clients' socket timeout, a worker paused long enough to be taken for dead. Runs finish, each
step's side effect happens once, nothing stays claimed."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable

import pytest
from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.settings import Settings

from ..conftest import ezgraph_process, subprocess_env, wait_for

GRAPH = "tests.graphs.slowchain"  # a -> b -> c, each step counting itself in a ledger


def start_workers(settings: Settings, count: int) -> list[subprocess.Popen[str]]:
    return [ezgraph_process("worker", env=subprocess_env(settings)) for _ in range(count)]


def stop_workers(workers: list[subprocess.Popen[str]]) -> str:
    errors = []
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGCONT)
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            _, stderr = worker.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            _, stderr = worker.communicate()
        errors.append(stderr)
    return "\n".join(errors)


def assert_each_step_ran_once(
    redis_conn: Redis, ledger: str, run_ids: list[str], counted: set[str]
) -> None:
    executions = Counter(e.decode() for e in redis_conn.lrange(ledger, 0, -1))
    twice = {key: n for key, n in executions.items() if n > 1 and key.split(":")[0] in counted}
    assert not twice, f"{len(twice)} steps ran twice, e.g. {list(twice.items())[:3]}"
    assert sum(executions[f"{r}:{s}"] == 1 for r in run_ids for s in "abc") == 3 * len(run_ids)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_redis_stall_longer_than_the_client_timeout_loses_and_doubles_nothing(
    private_redis: Callable[[], subprocess.Popen[bytes]],
    redis_conn: Redis,
    redis_url: str,
    sqlite_url: str,
) -> None:
    """SIGSTOP the Redis of two busy ezgraph workers for 8 s (their calls time out after 5 s
    and are sent again; Redis runs both when it wakes): every run finishes, each step's side
    effect once, no claimed job left behind."""
    server = private_redis()
    url = f"redis://127.0.0.1:{private_redis.port}/0"  # type: ignore[attr-defined]
    settings = Settings(redis_url=url, database_url=sqlite_url, modules_package=GRAPH)
    context = Context(settings)
    orchestrator = GraphOrchestrator(context=context)
    ledger = "test:stall-ledger"
    run_ids = [
        orchestrator.submit("a", ledger_url=redis_url, ledger_key=ledger, sleep=0.002)
        for _ in range(300)
    ]
    workers = start_workers(settings, 2)
    try:
        wait_for(lambda: redis_conn.llen(ledger) > 150, 60, "the workers to be busy")
        server.send_signal(signal.SIGSTOP)
        time.sleep(8)
        server.send_signal(signal.SIGCONT)
        woke = time.monotonic()
        wait_for(
            lambda: context.runs.live() == [] and context.runs.unsaved() == [],
            120,
            "every run to end and reach SQL",
        )
        print(f"\nrecovered {time.monotonic() - woke:.1f} s after Redis woke")
    finally:
        errors = stop_workers(workers)
    statuses = Counter(orchestrator.status(r)["status"] for r in run_ids)
    assert statuses == {"finished": 300}, (statuses, errors[-2000:])
    assert_each_step_ran_once(redis_conn, ledger, run_ids, set(run_ids))
    assert not [
        k for k in context.connection.keys("ezgraph:claimed:*") if context.connection.llen(k)
    ]
    assert context.store.count_runs() == 300


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_worker_paused_past_its_heartbeat_gives_up_what_was_taken_over(
    make_context: Callable[..., Context], redis_conn: Redis, redis_url: str
) -> None:
    """SIGSTOP one of two busy ezgraph workers for 15 s: the other takes its claims over. When
    it wakes it drops the ends of the steps it no longer holds (recorded once, by the other),
    runs none of its remaining claims, and every run finishes with nothing left claimed."""
    context = make_context(GRAPH, run_ttl=600)  # the jobs stay to be looked at after
    orchestrator = GraphOrchestrator(context=context)
    ledger = "test:pause-ledger"
    run_ids = [
        orchestrator.submit("a", ledger_url=redis_url, ledger_key=ledger, sleep=0.01)
        for _ in range(300)
    ]
    workers = start_workers(context.settings, 2)
    try:
        wait_for(lambda: redis_conn.llen(ledger) > 100, 60, "the workers to be busy")
        paused = workers[0]
        paused.send_signal(signal.SIGSTOP)
        time.sleep(15)
        paused.send_signal(signal.SIGCONT)
        wait_for(
            lambda: context.runs.live() == [] and context.runs.unsaved() == [],
            120,
            "every run to end and reach SQL",
        )
    finally:
        errors = stop_workers(workers)
    statuses = Counter(orchestrator.status(r)["status"] for r in run_ids)
    assert statuses == {"finished": 300}, (statuses, errors[-2000:])
    executions = Counter(e.decode() for e in redis_conn.lrange(ledger, 0, -1))
    assert all(executions[f"{r}:{s}"] >= 1 for r in run_ids for s in "abc")
    # At least once: the step the paused worker was running, and its claimed batch if it had
    # started them, may have run twice; nothing more.
    assert sum(n - 1 for n in executions.values()) <= context.settings.claim_batch
    claimed = redis_conn.keys("ezgraph:claimed:*")
    assert not [key for key in claimed if redis_conn.llen(key)]
    jobs = [f"rq:job:{r}-{s}" for r in run_ids for s in "abc"]
    pipe = redis_conn.pipeline()
    for job in jobs:
        pipe.hget(job, "status")
    assert set(pipe.execute()) == {b"finished"}
    for job in jobs:  # finished once: one result each, not a second from the woken worker
        pipe.xlen(job.replace("rq:job:", "rq:results:"))
    assert set(pipe.execute()) == {1}
    assert context.store.count_runs() == 300
