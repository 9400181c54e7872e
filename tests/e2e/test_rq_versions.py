"""What RQ 3 changed that could break a run, on the installed RQ (2.12 or 3.x): its ready
registry, which every worker's maintenance enqueues, and its key prefix (``RQ_KEY_PREFIX``)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest
from redis import Redis
from rq import Queue
from rq.registry import clean_registries

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.rq_compat import RQ_MAJOR

from ..conftest import ROOT, ezgraph_cli, simple_worker_burst, subprocess_env

WAITING_STATUSES = {b"deferred", b"ready_to_enqueue", b"rate_limited"}


def waiting_in_rq(redis_conn: Redis) -> list[str]:
    """What waits on RQ's side for RQ to enqueue it: its deferred and ready registries (RQ 3
    enqueues what the ready one holds at every worker's maintenance), and jobs whose status
    says so (deferred, RQ 3's ready_to_enqueue and rate_limited)."""
    keys = [k.decode() for k in redis_conn.keys("rq:ready:*") + redis_conn.keys("rq:deferred:*")]
    for key in redis_conn.keys("rq:job:*"):
        if redis_conn.type(key) == b"hash" and redis_conn.hget(key, "status") in WAITING_STATUSES:
            keys.append(key.decode())
    return keys


def test_a_join_never_waits_in_rqs_ready_or_deferred_registries(
    make_context: Callable[..., Context], redis_conn: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ezgraph creates a join's job once its predecessors have arrived (not with RQ's
    depends_on), so RQ's maintenance (RQ 3's ReadyJobRegistry.cleanup among it) has nothing of
    ezgraph's to enqueue: the join runs once, after both branches, on the stock worker too."""
    context = make_context("tests.graphs.diamond")  # a -> (b, c) -> d
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a")
    simple_worker_burst(context, redis_conn, monkeypatch, ["a", "b"])  # c waits: d is not ready
    assert waiting_in_rq(redis_conn) == []
    for name in ("a", "b", "c", "d"):
        clean_registries(Queue(name, connection=redis_conn))  # what a worker's maintenance does
    assert not redis_conn.exists(f"rq:job:{run_id}-d")
    assert Queue("d", connection=redis_conn).count == 0
    # d is no step yet: the run counts its arrivals (b's) and creates its job at c's.
    assert orchestrator.status(run_id)["nodes"] == {"a": "finished", "b": "finished", "c": "queued"}
    simple_worker_burst(context, redis_conn, monkeypatch, ["c", "d"])
    status = orchestrator.status(run_id)
    assert status["status"] == "finished" and status["result"]["trail"][-1] == "d"
    assert waiting_in_rq(redis_conn) == []


@pytest.mark.skipif(RQ_MAJOR < 3, reason="RQ 2 has no RQ_KEY_PREFIX: its keys are always rq:")
def test_rq_key_prefix_renames_every_rq_key_ezgraph_and_rqs_workers_write(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """With RQ 3's RQ_KEY_PREFIX set, ezgraph's worker, the stock ``rq worker`` and ``rq info``
    all use it: nothing is written under ``rq:``."""
    context = make_context("tests.graphs.chain")
    env = subprocess_env(context.settings, RQ_KEY_PREFIX="rqx")
    url = context.settings.redis_url or ""
    run_ids = []
    for worker in (
        ["ezgraph", "worker", "--burst"],
        ["rq.cli", "worker", "a", "b", "--burst", "--url", url],
    ):
        submitted = ezgraph_cli("submit", "a", "-f", "x=1", env=env)
        assert submitted.returncode == 0, submitted.stderr
        run_ids.append(submitted.stdout.split()[-1])
        done = subprocess.run(
            [sys.executable, "-m", *worker], env=env, cwd=ROOT, capture_output=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
    for run_id in run_ids:
        shown = ezgraph_cli("status", run_id, "--json", env=env)
        assert json.loads(shown.stdout)["status"] == "finished", shown.stderr
        assert redis_conn.hget(f"rqx:job:{run_id}-b", "status") == b"finished"
    info = subprocess.run(
        [sys.executable, "-m", "rq.cli", "info", "--url", url, "--raw", "a", "b"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "queue b 0, 0 executing, 2 finished, 0 failed" in info.stdout, info.stderr
    assert redis_conn.keys("rq:*") == []
