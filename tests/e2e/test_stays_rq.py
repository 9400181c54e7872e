"""The fast worker stays RQ: its jobs, registries, results and workers read as RQ's own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis import Redis
from rq import Queue, SimpleWorker, Worker
from rq.job import Job
from rq.utils import str_to_date

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.handover import RunWriter
from ezgraph.rq_compat import RQ_DATE_FORMAT, utcnow_iso
from ezgraph.settings import TUNING
from ezgraph.workers.fast import serve
from ezgraph.workers.stock import StockProcess

from ..conftest import ROOT, drain, subprocess_env


@pytest.fixture
def dashboard(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """rq-dashboard's Flask app (its own app factory) on the test Redis."""
    monkeypatch.setenv("RQ_DASHBOARD_REDIS_URL", redis_url)
    monkeypatch.setenv("RQ_DASHBOARD_URL_PREFIX", "/rq")
    from rq_dashboard.app import create_app  # reads the environment when called

    yield create_app().test_client()


def test_finished_steps_read_like_rq_jobs_in_job_fetch_and_rq_info(
    make_context: Callable[..., Context], redis_conn: Redis, redis_url: str
) -> None:
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    run_ids = [orchestrator.submit("a", n=i) for i in range(3)]
    drain(context)
    job = Job.fetch(f"{run_ids[0]}-b", connection=redis_conn)
    assert job.get_status() == "finished"
    assert job.return_value() == {"b": True, "trail": ["a", "b"]}
    assert job.latest_result().type.name == "SUCCESSFUL"
    assert job.origin == "b" and job.ended_at is not None
    assert Queue("b", connection=redis_conn).finished_job_registry.count == 3
    assert Queue("a", connection=redis_conn).started_job_registry.count == 0
    info = subprocess.run(
        [sys.executable, "-m", "rq.cli", "info", "--url", redis_url, "--raw", "a", "b"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert info.returncode == 0, info.stderr
    assert "queue a 0, 0 executing, 3 finished, 0 failed" in info.stdout
    assert "queue b 0, 0 executing, 3 finished, 0 failed" in info.stdout


def test_rq_dashboard_reads_queues_jobs_and_a_busy_fast_worker(
    make_context: Callable[..., Context], redis_conn: Redis, dashboard: object, redis_url: str
) -> None:
    context = make_context("tests.graphs.slowchain")
    orchestrator = GraphOrchestrator(context=context)
    worker = subprocess.Popen(
        [sys.executable, "-m", "ezgraph", "worker"],
        env=subprocess_env(context.settings),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = dashboard
    try:
        deadline = time.monotonic() + 20
        # Before its first job it says it is idle (`rq info` shows '?' for a worker with no state).
        while [w.get_state() for w in Worker.all(connection=redis_conn)] in ([], ["?"]):
            assert time.monotonic() < deadline, "the worker never said its state"
            time.sleep(0.05)
        assert [w.get_state() for w in Worker.all(connection=redis_conn)] == ["idle"]
        run_id = orchestrator.submit("a", ledger_url=redis_url, ledger_key="test:ledger", sleep=3)
        while redis_conn.llen("test:ledger") == 0:
            assert time.monotonic() < deadline, "the worker never started the step"
            time.sleep(0.05)
        workers = client.get("/rq/0/data/workers.json")  # type: ignore[attr-defined]
        assert workers.status_code == 200
        busy = [w for w in workers.get_json()["workers"] if w["state"] == "busy"]
        assert len(busy) == 1 and busy[0]["current_job"]["job_id"] == f"{run_id}-a"
        assert Worker.all(connection=redis_conn)[0].get_current_job_id() == f"{run_id}-a"
        queues = client.get("/rq/0/data/queues.json").get_json()  # type: ignore[attr-defined]
        counts = {q["name"]: q for q in queues["queues"]}
        assert counts["a"]["started_job_registry_count"] == 1
        job = client.get(f"/rq/0/data/job/{run_id}-a.json")  # type: ignore[attr-defined]
        assert job.status_code == 200 and job.get_json()["status"] == "started"
        page = client.get("/rq/0/view/workers")  # type: ignore[attr-defined]
        assert page.status_code == 200
        deadline = time.monotonic() + 30
        while orchestrator.status(run_id)["status"] != "finished":
            assert time.monotonic() < deadline, "the run never finished"
            time.sleep(0.05)
        # Idle again: no current job (RQ reads an empty id as a job, and the page fails).
        workers = client.get("/rq/0/data/workers.json")  # type: ignore[attr-defined]
        assert workers.status_code == 200
        idle = [(w["state"], w["current_job"]) for w in workers.get_json()["workers"]]
        assert idle == [("idle", "idle")]  # the dashboard's word for no current job
    finally:
        worker.terminate()
        worker.wait(30)
    finished = client.get(f"/rq/0/data/job/{run_id}-a.json").get_json()  # type: ignore[attr-defined]
    assert finished["status"] == "finished"


def test_every_rq_dashboard_page_reads_steps_in_every_state(
    make_context: Callable[..., Context], redis_conn: Redis, dashboard: object
) -> None:
    """Each page and data route of rq-dashboard answers, on the installed RQ, with steps
    finished, failed, canceled, queued and waiting for a delayed retry (scheduled)."""
    failing = make_context("tests.graphs.failing")
    GraphOrchestrator(context=failing).submit("a", run_id="failing")
    drain(failing)
    delayed = make_context("tests.graphs.flaky.delayed")
    GraphOrchestrator(context=delayed).submit("a", run_id="delayed")
    serve(delayed, ["a"], burst=True, with_scheduler=False, log_level="WARNING")
    chain = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=chain)
    orchestrator.submit("a", run_id="done")
    drain(chain)
    orchestrator.submit("a", run_id="waiting")
    orchestrator.submit("a", run_id="dropped")
    orchestrator.cancel("dropped")
    statuses = {
        "done-b": "finished",
        "failing-c": "failed",
        "failing-d": None,  # never created: its run failed first
        "delayed-a": "scheduled",
        "waiting-a": "queued",
        "dropped-a": "canceled",
    }
    client: Any = dashboard
    pages = ["/rq/", "/rq/0/view/queues", "/rq/0/view/workers", "/rq/0/view/jobs"]
    pages += ["/rq/0/data/queues.json", "/rq/0/data/workers.json"]
    registries = ("queued", "started", "finished", "failed", "deferred", "scheduled", "canceled")
    for queue in ("a", "b", "c", "d"):
        for registry in registries:
            pages.append(f"/rq/0/view/jobs/{queue}/{registry}/8/asc/1")
            pages.append(f"/rq/0/data/jobs/{queue}/{registry}/8/asc/1.json")
    for job_id, status in statuses.items():
        if status is not None:
            pages.append(f"/rq/0/view/job/{job_id}")
            assert client.get(f"/rq/0/data/job/{job_id}.json").get_json()["status"] == status
    failed = [(page, client.get(page, follow_redirects=True).status_code) for page in pages]
    assert [(page, code) for page, code in failed if code != 200] == []
    listed = client.get("/rq/0/data/jobs/c/failed/8/asc/1.json").get_json()["jobs"]
    assert [job["id"] for job in listed] == ["failing-c"]


def test_dates_are_stamped_in_rqs_format_and_read_back_by_rq() -> None:
    """The cached whole-second prefix gives RQ's exact format, parsed by RQ to the same instant."""
    stamps = []
    for _ in range(3):  # across a second boundary at least once
        before = datetime.now(UTC)
        stamp = utcnow_iso()
        after = datetime.now(UTC)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
        parsed = str_to_date(stamp)
        assert before - timedelta(milliseconds=1) <= parsed <= after + timedelta(milliseconds=1)
        assert stamp == parsed.strftime(RQ_DATE_FORMAT)
        stamps.append(stamp)
        time.sleep(0.51)
    assert stamps == sorted(stamps)


@pytest.mark.parametrize("worker", ["fast", "stock"])
def test_small_job_data_is_stored_as_is_and_large_compressed_and_both_read_by_rq(
    make_context: Callable[..., Context],
    redis_conn: Redis,
    monkeypatch: pytest.MonkeyPatch,
    worker: str,
) -> None:
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    small = orchestrator.submit("a", note="short")
    large = orchestrator.submit("a", note="x" * (TUNING.compress_over * 4))
    stored = {run: redis_conn.hget(f"rq:job:{run}-a", "data") or b"" for run in (small, large)}
    assert stored[small].startswith(b"\x80")  # a bare pickle
    assert len(stored[large]) < TUNING.compress_over and zlib.decompress(stored[large])
    for run in (small, large):  # RQ reads both (Job.restore falls back to uncompressed)
        assert Job.fetch(f"{run}-a", connection=redis_conn).kwargs["run_id"] == run
    if worker == "fast":
        drain(context)
    else:  # a stock SimpleWorker in this process, its settings from the environment
        for name, value in subprocess_env(context.settings).items():
            monkeypatch.setenv(name, value)
        processes: dict[object, StockProcess] = {}
        monkeypatch.setattr(StockProcess, "_by_connection", processes)
        try:
            queues = [Queue(node, connection=redis_conn) for node in ("b", "a")]
            SimpleWorker(queues, connection=redis_conn).work(burst=True, with_scheduler=False)
        finally:
            for process in processes.values():
                process.stop()
        RunWriter(context, "test").write_unsaved()
    for run, note in ((small, "short"), (large, "x" * (TUNING.compress_over * 4))):
        record = context.store.load_run(run)
        assert record is not None and record.status == "finished"
        assert record.result["note"] == note and record.result["trail"] == ["a", "b"]
