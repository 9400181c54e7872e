"""What ezgraph's RQ layer (rq_compat.py, lua/lib/rq.lua) writes, field by field against what
RQ's own code writes for the same job: a new job, a job running (its execution and worker), a
job a worker finished, one that failed, one requeued; on the installed RQ, 2.12 or 3.x (CI runs
this file on both).

Where ezgraph writes less, it is a field RQ writes empty (``''``), which RQ reads as absent;
where it writes more, the field is ezgraph's own (``ezgraph_*``, or ``meta`` with the retry
count). Everything else must be equal, so the next RQ version is one layer's work."""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis
from rq import Queue, Retry, SimpleWorker
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.model.step_job import StepJob
from ezgraph.rq_compat import RQ_MAJOR, STEP_FUNCTION, decode_call
from ezgraph.workers.fast import serve

from ..conftest import simple_worker_burst

RQ_DATE = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
DATES = {"created_at", "enqueued_at", "started_at", "ended_at", "last_heartbeat"}
EZGRAPH_ONLY = {"meta"}  # ezgraph keeps the retry count there (RQ keeps only retries_left)


def job_hash(redis_conn: Redis, job_id: str) -> dict[str, bytes]:
    return {k.decode(): v for k, v in redis_conn.hgetall(f"rq:job:{job_id}").items()}


def assert_same_fields(ezgraph: dict[str, bytes], rq: dict[str, bytes], differ: set[str]) -> None:
    """Field by field: equal, a date on both sides, or empty in RQ's and absent in ezgraph's."""
    for field, value in rq.items():
        if field in differ:
            continue
        if field in DATES and value:
            assert RQ_DATE.fullmatch(ezgraph.get(field, b"")), field
        elif value == b"":
            assert ezgraph.get(field, b"") == b"", field
        else:
            assert ezgraph.get(field) == value, field
    extra = {f for f in ezgraph if f not in rq} - EZGRAPH_ONLY
    assert all(f.startswith("ezgraph_") for f in extra), extra


@pytest.mark.parametrize("retries", [0, 2])
def test_a_step_job_is_the_job_rq_would_create(
    make_context: Callable[..., Context], redis_conn: Redis, retries: int
) -> None:
    context = make_context("tests.graphs.chain", retries=retries, retry_intervals=(1, 5))
    graph = context.graph()
    job = StepJob("r1", "a", graph.package, state={"q": "é"})
    planned = context.jobs.build(graph, job)
    fields = dict(zip(planned.fields[::2], planned.fields[1::2], strict=True))
    redis_conn.hset("rq:job:ezgraph", mapping=fields)
    Queue("a", connection=redis_conn).enqueue_call(
        STEP_FUNCTION,
        kwargs=job.kwargs(),
        job_id="r1-a",
        description=f"a ({graph.functions['a']}) run r1",
        timeout=context.settings.job_timeout,
        result_ttl=context.settings.result_ttl,
        failure_ttl=context.settings.result_ttl,
        retry=Retry(max=retries, interval=[1, 5]) if retries else None,
    )
    ours, theirs = job_hash(redis_conn, "ezgraph"), job_hash(redis_conn, "r1-a")
    assert_same_fields(ours, theirs, differ={"data"})
    assert decode_call(ours["data"]) == decode_call(theirs["data"])
    if retries:
        assert pickle.loads(ours["meta"]) == {"retries": retries}
        assert json.loads(ours["retry_intervals"]) == [1, 5]
    ezgraph_job = Job.fetch("ezgraph", connection=redis_conn)  # RQ reads it as its own
    assert ezgraph_job.kwargs == job.kwargs() and ezgraph_job.origin == "a"


def assert_no_execution_left(redis_conn: Redis, job_id: str, queue: str) -> None:
    """Job ``job_id`` runs nowhere, as RQ's Execution.delete leaves it: no execution hash, no
    entry in its executions, the started registry or (RQ 3) any worker's executions."""
    prefix = f"{job_id}:".encode()
    assert not redis_conn.keys(f"rq:execution:{job_id}:*")
    assert redis_conn.zcard(f"rq:executions:{job_id}") == 0
    assert not [m for m in redis_conn.zrange(f"rq:wip:{queue}", 0, -1) if m.startswith(prefix)]
    for key in redis_conn.keys("rq:worker:*:executions"):
        assert not [m for m in redis_conn.smembers(key) if m.startswith(prefix)]


def observed(redis_conn: Redis, job_id: str) -> dict[str, Any]:
    """What step ``job_id`` saw of RQ's storage as it ran (tests.steps.observe_rq)."""
    seen: dict[str, Any] = pickle.loads(redis_conn.get(f"test:observed:{job_id}") or b"")
    return seen


def test_a_job_ezgraphs_worker_runs_is_the_job_rqs_worker_runs(
    make_context: Callable[..., Context],
    redis_conn: Redis,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While it runs: the job, its execution and its worker, as the step saw them, on RQ's
    SimpleWorker and on ezgraph's. The first steps carried a TTL (as a finished job requeued
    does): a started job has none. Each step sees only its own execution: on ezgraph's worker
    another run's step ended by failing before the first, and the first at its finish."""
    context = make_context("tests.graphs.observed")
    orchestrator = GraphOrchestrator(context=context)

    def submit(run_id: str, start: str = "a") -> None:
        orchestrator.submit(start, run_id=run_id, ledger_url=redis_url)
        redis_conn.expire(f"rq:job:{run_id}-{start}", 1000)

    submit("rq")
    simple_worker_burst(context, redis_conn, monkeypatch, ["a", "b"])
    submit("fails", "boom")  # claimed before ez-a (sink first), one job per claim
    submit("ez")
    serve(context, burst=True, with_scheduler=False, log_level="WARNING", claim_batch=1)
    assert orchestrator.status("fails")["status"] == "failed"

    ours, theirs = observed(redis_conn, "ez-a"), observed(redis_conn, "rq-a")
    ours_job, theirs_job = ({k.decode(): v for k, v in o["job"].items()} for o in (ours, theirs))
    assert_same_fields(ours_job, theirs_job, differ={"data", "description", "worker_name"})
    assert ours_job["status"] == b"started"
    assert ours["job_ttl"] == theirs["job_ttl"] == -1
    assert ours["worker"][b"state"] == theirs["worker"][b"state"] == b"busy"
    ((_, ours_execution),) = ours["executions"].items()
    ((_, theirs_execution),) = theirs["executions"].items()
    assert set(ours_execution) == set(theirs_execution)
    for run_id in ("ez", "rq"):
        for step in ("a", "b"):
            assert_runs_here(observed(redis_conn, f"{run_id}-{step}"), f"{run_id}-{step}")
    for job_id in ("ez-a", "ez-b", "rq-a", "rq-b", "fails-boom"):
        assert_no_execution_left(redis_conn, job_id, job_id.rsplit("-", 1)[1])


def assert_runs_here(seen: dict[str, Any], job_id: str) -> None:
    """The step's job was started by its worker, with one execution, and RQ's code reads it as
    that worker's current job (RQ 3: from the worker's executions set, which holds only it)."""
    assert seen["current_job_id"] == job_id
    ((member, fields),) = seen["executions"].items()
    execution = member.decode().removeprefix(f"{job_id}:")
    assert seen["wip"] == [member] and seen["rq_executions"] == [execution]
    assert seen["job_executions"] == [execution.encode()]
    assert fields[b"worker_name"] == seen["job"][b"worker_name"]
    assert seen["execution_ttls"][0] > 0 and seen["job_executions_ttl"] > 0
    if RQ_MAJOR >= 3:
        assert fields[b"job_id"] == job_id.encode()
        assert seen["worker_executions"] == {member}
        assert seen["worker_executions_ttl"] > 0
        assert b"current_job" not in seen["worker"]
    else:
        assert seen["worker"][b"current_job"] == job_id.encode()
        assert seen["worker_executions"] == set()


def test_a_job_ezgraphs_worker_finished_is_the_job_rqs_worker_finishes(
    make_context: Callable[..., Context],
    redis_conn: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two runs' first steps, one finished by RQ's SimpleWorker, one by ezgraph's worker."""
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    orchestrator.submit("a", run_id="rq")
    orchestrator.submit("a", run_id="ez")
    simple_worker_burst(context, redis_conn, monkeypatch, ["a"], max_jobs=1)
    serve(context, ["a"], burst=True, with_scheduler=False, log_level="WARNING")

    ours, theirs = job_hash(redis_conn, "ez-a"), job_hash(redis_conn, "rq-a")
    assert_same_fields(ours, theirs, differ={"data", "description", "worker_name"})
    assert ours["status"] == b"finished" and ours["worker_name"]
    for key in ("rq:job:", "rq:results:"):  # the same TTL, up to the second between them
        assert 0 <= redis_conn.ttl(f"{key}ez-a") - redis_conn.ttl(f"{key}rq-a") <= 1
        assert redis_conn.ttl(f"{key}rq-a") > 0
    ((_, ours_result),) = redis_conn.xrange("rq:results:ez-a")
    ((_, theirs_result),) = redis_conn.xrange("rq:results:rq-a")
    assert set(ours_result) == set(theirs_result)
    assert ours_result[b"type"] == theirs_result[b"type"]
    assert ours_result[b"return_value"] == theirs_result[b"return_value"]
    for job_id in ("ez-a", "rq-a"):
        job = Job.fetch(job_id, connection=redis_conn)
        assert job.return_value() == {"a": True, "trail": ["a"]}
        assert job.latest_result() is not None
        assert job_id in FinishedJobRegistry("a", connection=redis_conn)
        assert job_id not in StartedJobRegistry("a", connection=redis_conn)
        assert_no_execution_left(redis_conn, job_id, "a")


def test_a_retried_runs_job_is_requeued_as_the_failed_registry_requeues(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """A failed run's failed step, requeued by ``ezgraph retry`` (resume_run.lua), and the same
    kind of job requeued by RQ's FailedJobRegistry.requeue."""
    context = make_context("tests.graphs.failing")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("c", run_id="ez")
    serve(context, burst=True, with_scheduler=False, log_level="WARNING")
    rq_queue = Queue("c", connection=redis_conn)
    ttl = context.settings.result_ttl
    rq_queue.enqueue_call(
        "tests.steps.fail", args=({},), job_id="rq-c", result_ttl=ttl, failure_ttl=ttl
    )
    SimpleWorker([rq_queue], connection=redis_conn).work(burst=True)
    assert redis_conn.hget("rq:job:rq-c", "status") == b"failed"
    assert redis_conn.hget("rq:job:ez-c", "status") == b"failed"
    failed = {job_id: job_hash(redis_conn, job_id) for job_id in ("ez-c", "rq-c")}
    # The step ended its run: its failure is kept no longer than the run's keys.
    assert int(failed["ez-c"].pop("failure_ttl")) == context.settings.run_ttl
    failed["rq-c"].pop("failure_ttl")
    assert_same_fields(
        failed["ez-c"], failed["rq-c"], differ={"data", "description", "exc_info", "worker_name"}
    )
    for job_id in ("ez-c", "rq-c"):  # ended by RQ's failure handling, on both paths
        result = Job.fetch(job_id, connection=redis_conn).latest_result()
        assert result is not None and result.type.name == "FAILED"
        assert (result.exc_string or "").startswith("Traceback")
        assert job_id in FailedJobRegistry("c", connection=redis_conn)
        assert_no_execution_left(redis_conn, job_id, "c")

    orchestrator.retry(run_id)
    FailedJobRegistry("c", connection=redis_conn).requeue("rq-c")

    ours, theirs = job_hash(redis_conn, "ez-c"), job_hash(redis_conn, "rq-c")
    ours.pop("failure_ttl"), theirs.pop("failure_ttl")
    # RQ keeps a compressed '' as exc_info (read back as ''); ezgraph drops the field.
    assert_same_fields(ours, theirs, differ={"data", "description", "exc_info", "worker_name"})
    assert ours["status"] == theirs["status"] == b"queued"
    assert ours["started_at"] == theirs["started_at"] == b""
    assert ours["ended_at"] == theirs["ended_at"] == b""
    assert redis_conn.lrange("rq:queue:c", 0, -1) == [b"ez-c", b"rq-c"]  # each at the back
    for job_id in ("ez-c", "rq-c"):
        assert job_id not in FailedJobRegistry("c", connection=redis_conn)
        assert Job.fetch(job_id, connection=redis_conn).get_status() == "queued"
