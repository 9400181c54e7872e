"""Redis holds only the work in flight: every key an ended run wrote expires soon after the run
is in SQL (ezgraph's keys and its RQ jobs': hashes, results streams, registry entries)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis
from rq import Queue

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.errors import ConnectionFailed
from ezgraph.handover import RunWriter
from ezgraph.model.records import RunRecord
from ezgraph.rq_compat import RQ_PREFIX
from ezgraph.settings import TUNING

from ..conftest import drain, simple_worker_burst

RUN_TTL = 30
# Keys that hold no run's data and live as long as the deployment: queue and worker sets, the
# registries (whose entries are checked one by one), ezgraph's run indexes and workers' marks.
SHARED = (
    f"{RQ_PREFIX}queues",
    f"{RQ_PREFIX}workers",
    f"{RQ_PREFIX}worker:",
    f"{RQ_PREFIX}finished:",
    f"{RQ_PREFIX}failed:",
    f"{RQ_PREFIX}canceled:",
    f"{RQ_PREFIX}clean_registries:",
    f"{RQ_PREFIX}clean_groups",
    "ezgraph:runs:",
    "ezgraph:workers",
    "ezgraph:claimed:",
    "ezgraph:reply:",  # one per caller (a thread), its last reply: not per run
    "ezgraph:wake:",  # one per queue, 8 entries at most
    "ezgraph:idle:",  # one per queue, a few seconds
)
REGISTRIES = ("finished", "failed", "canceled", "wip", "scheduled", "deferred")


def unbounded(redis_conn: Redis, ttl: int) -> list[str]:
    """What in Redis outlives ``ttl`` seconds: a key of no deployment-wide kind without a TTL
    (or with a longer one), a registry entry scored later than ``ttl`` from now."""
    found = []
    for raw in redis_conn.scan_iter(count=1000):
        name = raw.decode()
        if name.startswith(SHARED):
            continue
        left = redis_conn.ttl(name)  # 0: under a second left; -2: expired since the scan
        if left == -1 or left > ttl:
            found.append(f"{name} (TTL {left})")
    limit = time.time() + ttl + 1
    for kind in REGISTRIES:
        for raw in redis_conn.scan_iter(match=f"{RQ_PREFIX}{kind}:*"):
            for member, score in redis_conn.zrange(raw, 0, -1, withscores=True):
                if score > limit:
                    found.append(f"{raw.decode()} {member.decode()} (until {score - time.time()})")
    return found


def test_every_key_of_runs_ended_on_ezgraph_workers_expires_within_the_run_ttl(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    for package, start in (
        ("tests.graphs.chain", "a"),
        ("tests.graphs.mapped", "m"),
        ("tests.graphs.failing", "a"),
    ):
        context = make_context(package, run_ttl=RUN_TTL)
        orchestrator = GraphOrchestrator(context=context)
        payload = {"items": [1, 2, 3]} if start == "m" else {}
        run_id = orchestrator.submit(start, payload)
        drain(context)
        assert orchestrator.status(run_id)["status"] in ("finished", "failed")
        assert context.store.load_run(run_id) is not None
    canceled = orchestrator.submit("a", {})
    orchestrator.cancel(canceled)
    RunWriter(context, "test").write_unsaved()
    assert context.store.load_run(canceled) is not None
    assert unbounded(redis_conn, RUN_TTL) == []


def test_every_key_of_runs_ended_on_stock_rq_workers_expires_within_the_run_ttl(
    make_context: Callable[..., Context], redis_conn: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EZGRAPH_RUN_TTL", str(RUN_TTL))  # the stock workers' setting
    for package, start in (("tests.graphs.chain", "a"), ("tests.graphs.failing", "a")):
        context = make_context(package, run_ttl=RUN_TTL)
        orchestrator = GraphOrchestrator(context=context)
        run_id = orchestrator.submit(start, {})
        simple_worker_burst(context, redis_conn, monkeypatch, list(context.graph().nodes))
        assert context.store.load_run(run_id) is not None
    assert unbounded(redis_conn, RUN_TTL) == []


def database_down(records: Sequence[RunRecord], *_: Any, **__: Any) -> None:
    raise ConnectionFailed("the database is down")


def test_a_big_runs_jobs_are_set_to_expire_a_chunk_per_call(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """No call sets many more than ``expire_chunk`` jobs to expire: the rest wait for the next
    (a hash small enough to be a listpack, up to 512 fields, is scanned whole)."""
    context = make_context(
        "tests.graphs.mapped", replace(TUNING, expire_chunk=100), run_ttl=RUN_TTL
    )
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("m", {"items": list(range(600))})
    drain(context)  # writes the run: its 602 jobs set to expire over several calls
    assert context.store.load_run(run_id) is not None
    assert redis_conn.zcard(context.keys.expiring_runs) == 0
    assert unbounded(redis_conn, RUN_TTL) == []
    # One call alone stops after a chunk, and says the run still waits.
    run_id = orchestrator.submit("m", {"items": list(range(600))})
    context.store.save_runs = database_down  # type: ignore[method-assign]
    drain(context)
    assert context.runs.unsaved() == [run_id]
    ended = redis_conn.hget(context.keys.run(run_id), "ended_at").decode()
    assert context.runs.mark_saved([(run_id, ended)], RUN_TTL) == 1
    assert redis_conn.ttl(context.keys.jobs(run_id)) == -1  # it lists the jobs still to set
    assert context.runs.expire_saved(RUN_TTL) >= 2
    assert redis_conn.ttl(context.keys.jobs(run_id)) > 0
    assert unbounded(redis_conn, RUN_TTL) == []


@pytest.mark.parametrize(
    ("package", "payload", "stale", "after"),
    [
        ("tests.graphs.chain", {}, "a", "b"),
        ("tests.graphs.mapped", {"items": [1, 2]}, "square-1", "collect"),  # reads its mapper's
    ],
)
def test_a_run_that_left_redis_is_read_from_sql_and_a_stale_rerun_of_its_step_creates_nothing(
    make_context: Callable[..., Context],
    redis_conn: Redis,
    package: str,
    payload: dict[str, Any],
    stale: str,
    after: str,
) -> None:
    context = make_context(package, run_ttl=1)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit(next(iter(context.graph().nodes)), payload)
    drain(context)
    job_id = f"{run_id}-{stale}"
    data = redis_conn.hgetall(f"{RQ_PREFIX}job:{job_id}")
    time.sleep(1.1)  # EZGRAPH_RUN_TTL
    assert not list(redis_conn.scan_iter(match=f"*{run_id}*"))
    assert orchestrator.status(run_id)["status"] == "finished"  # from SQL
    # The step's job comes back (a worker that held it, a requeue): it runs, and creates nothing.
    queue = data[b"origin"].decode()
    redis_conn.hset(f"{RQ_PREFIX}job:{job_id}", mapping={**data, b"status": b"queued"})
    Queue(queue, connection=redis_conn).push_job_id(job_id)
    drain(context)
    assert redis_conn.llen(f"{RQ_PREFIX}queue:{queue}") == 0  # it ran
    assert not redis_conn.exists(f"{RQ_PREFIX}job:{job_id}")  # and was not kept
    assert not redis_conn.exists(f"{RQ_PREFIX}job:{run_id}-{after}")
    assert not redis_conn.exists(context.keys.run(run_id))
    assert unbounded(redis_conn, 1) == []
