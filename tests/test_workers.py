"""Stock ``rq worker`` and ``ezgraph worker`` processes serve ezgraph steps end to end."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis
from rq import Queue

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Runtime, StepInput
from ezgraph.state.runs import GATHER_FIELD, RunBook
from ezgraph.step import execute_step
from ezgraph.workers.fast import FastWorker, serve

from .conftest import ROOT, ezgraph_cli, subprocess_env


def rq_worker_burst(runtime: Runtime, *queues: str) -> subprocess.CompletedProcess[str]:
    settings = runtime.settings
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "rq.cli",
            "worker",
            *queues,
            "--url",
            settings.redis_url or "",
            "--burst",
        ],
        env=subprocess_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_stock_rq_worker_runs_a_chain_and_the_run_is_persisted(
    make_runtime: Callable[..., Runtime], database_url: str
) -> None:
    runtime = make_runtime("tests.graphs.chain", database_url=database_url)
    orchestrator = GraphOrchestrator(runtime=runtime)
    run_id = orchestrator.submit("a", question="hoje?")
    done = rq_worker_burst(runtime, "a", "b")
    assert done.returncode == 0, done.stderr
    stored = runtime.store.load_run(run_id)
    assert stored is not None and stored.status == "finished"
    assert stored.result == {"question": "hoje?", "trail": ["a", "b"], "a": True, "b": True}


def test_stock_rq_worker_serves_a_joined_graph(
    make_runtime: Callable[..., Runtime], redis_conn: Redis
) -> None:
    runtime = make_runtime("tests.graphs.wide")
    orchestrator = GraphOrchestrator(runtime=runtime)
    run_ids = [orchestrator.submit("s") for _ in range(5)]
    done = rq_worker_burst(runtime, "s", *(f"p{i}" for i in range(8)), "j")
    assert done.returncode == 0, done.stderr
    for run_id in run_ids:
        stored = runtime.store.load_run(run_id)
        assert stored is not None and stored.status == "finished"
        assert len(stored.steps) == 10
        assert sorted(stored.result["trail"])[-1] == "s"


def test_ezgraph_worker_burst_serves_every_node_by_default(
    make_runtime: Callable[..., Runtime],
) -> None:
    runtime = make_runtime("tests.graphs.diamond")
    orchestrator = GraphOrchestrator(runtime=runtime)
    run_id = orchestrator.submit("a")
    done = ezgraph_cli("worker", "--burst", env=subprocess_env(runtime.settings))
    assert done.returncode == 0, done.stderr
    stored = runtime.store.load_run(run_id)
    assert stored is not None and stored.status == "finished"
    assert [s.step for s in stored.steps] == ["a", "b", "c", "d"]


def test_ezgraph_worker_takes_later_steps_of_started_runs_before_new_runs(
    make_runtime: Callable[..., Runtime],
) -> None:
    runtime = make_runtime("tests.graphs.chain")
    orchestrator = GraphOrchestrator(runtime=runtime)
    run_ids = [orchestrator.submit("a") for _ in range(3)]
    serve(runtime, burst=True, with_scheduler=False, log_level="WARNING", claim_batch=1)
    started = []
    for n, run_id in enumerate(run_ids):
        stored = runtime.store.load_run(run_id)
        assert stored is not None and stored.status == "finished"
        started += [(step.started_at, f"{step.step}{n}") for step in stored.steps]
    # Sink first: each run's b runs before the next run's a (declared order: a0 a1 a2 b0 b1 b2).
    assert [name for _, name in sorted(started)] == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_ezgraph_worker_refuses_an_unknown_node(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime("tests.graphs.chain")
    done = ezgraph_cli("worker", "nope", "--burst", env=subprocess_env(runtime.settings))
    assert done.returncode == 2
    assert done.stderr.strip() == "error: unknown node 'nope' (graph nodes: a, b)"


def test_rq_worker_with_the_fast_worker_class_runs_a_chain(
    make_runtime: Callable[..., Runtime],
) -> None:
    runtime = make_runtime("tests.graphs.chain")
    run_id = GraphOrchestrator(runtime=runtime).submit("a")
    settings = runtime.settings
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rq.cli",
            "worker",
            "a",
            "b",
            "--url",
            settings.redis_url or "",
            "-w",
            "ezgraph.workers.fast.FastWorker",
            "--burst",
        ],
        env=subprocess_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    stored = runtime.store.load_run(run_id)
    assert stored is not None and stored.status == "finished"


def test_a_successor_rings_its_queue_only_while_an_ezgraph_worker_waits_on_it(
    make_runtime: Callable[..., Runtime], redis_conn: Redis
) -> None:
    """An idle ezgraph worker blocks on its queues' bells and wakes when a job arrives; a queue
    nobody waits on (its workers are busy, or stock workers) costs no bell per job."""
    runtime = make_runtime("tests.graphs.chain")
    orchestrator = GraphOrchestrator(runtime=runtime)
    bell = "ezgraph:bell:b"

    def run_a() -> str:
        run_id = orchestrator.submit("a")
        execute_step(runtime, None, run_id, "a", "tests.graphs.chain", StepInput(state={}))
        return run_id

    first = run_a()
    assert redis_conn.llen(bell) == 0  # no ezgraph worker waits on b
    worker = FastWorker([Queue("b", connection=redis_conn)], connection=redis_conn, runtime=runtime)
    assert [job.id for job in worker._fast_call(["b"], 8)] == [f"{first}-b"]
    run_a()
    assert redis_conn.llen(bell) == 0  # the worker is busy: it claims again when done
    assert worker._fast_call(["b"], 8) != []
    assert worker._fast_call(["b"], 8) == []  # nothing left: the worker waits on b's bell
    third = run_a()
    assert redis_conn.blpop([bell], timeout=1) is not None
    assert [job.id for job in worker._fast_call(["b"], 8)] == [f"{third}-b"]


def test_a_successor_its_own_worker_claims_in_the_same_call_wakes_nobody(
    make_runtime: Callable[..., Runtime], redis_conn: Redis
) -> None:
    """The call that finishes a step claims after creating its successors: a successor that
    worker takes itself rings no bell, one left in the queue wakes an idle worker."""
    runtime = make_runtime("tests.graphs.chain")
    orchestrator = GraphOrchestrator(runtime=runtime)
    bell = "ezgraph:bell:b"
    idle = FastWorker([Queue("b", connection=redis_conn)], connection=redis_conn, runtime=runtime)

    def finish_a(queues: list[str]) -> list[str]:
        """A worker of ``queues`` claims and runs a new run's step a, then makes its next call."""
        worker = FastWorker(
            [Queue(name, connection=redis_conn) for name in queues],
            connection=redis_conn,
            runtime=runtime,
        )
        orchestrator.submit("a")
        (claimed,) = worker._fast_call(["a"], 8)
        finished = worker._perform(claimed)
        assert finished is not None
        worker._finished.append(finished)
        return [job.id for job in worker._fast_call(queues, 8)]

    assert idle._fast_call(["b"], 8) == []  # idle: waits on b's bell
    redis_conn.delete(bell)
    claimed = finish_a(["a", "b"])
    assert [job_id.rsplit("-", 1)[1] for job_id in claimed] == ["b"]
    assert redis_conn.llen(bell) == 0
    assert finish_a(["a"]) == []  # b waits in its queue for the idle worker
    assert redis_conn.llen(bell) == 1


def spy_on_gathers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The runs whose join read its input itself (RunBook.gather), in call order."""
    reads: list[str] = []
    original = RunBook.gather

    def gather(book: RunBook, run_id: str, predecessors: Any, states: Any) -> Any:
        reads.append(run_id)
        return original(book, run_id, predecessors, states)

    monkeypatch.setattr(RunBook, "gather", gather)
    return reads


@pytest.mark.parametrize(("items", "reads_itself"), [([3, 1, 2], False), (list(range(1001)), True)])
def test_the_ezgraph_worker_hands_a_join_its_input_with_the_claim(
    make_runtime: Callable[..., Runtime],
    monkeypatch: pytest.MonkeyPatch,
    items: list[int],
    reads_itself: bool,
) -> None:
    """The claim of a join reads its predecessors' outputs and states (no round trip of the
    step's own), except for a map too large to read in one call."""
    reads = spy_on_gathers(monkeypatch)
    diamond = make_runtime("tests.graphs.diamond")
    orchestrator = GraphOrchestrator(runtime=diamond)
    run_id = orchestrator.submit("a")
    serve(diamond, burst=True, with_scheduler=False, log_level="WARNING")
    result = orchestrator.status(run_id)["result"]
    assert result["trail"] == ["a", "c", "d"] and result["b"] is True and result["c"] is True

    mapped = make_runtime("tests.graphs.mapped")
    orchestrator = GraphOrchestrator(runtime=mapped)
    map_run = orchestrator.submit("m", items=items)
    serve(mapped, burst=True, with_scheduler=False, log_level="WARNING")
    status = orchestrator.status(map_run)
    assert status["status"] == "finished"
    assert status["result"]["values"] == [i * i for i in items]
    assert reads == ([map_run] if reads_itself else [])


@pytest.mark.parametrize(
    "field", [None, '{{"run": "{run}", "preds": ["b"], "states": ["b"]}}', "not json"]
)
def test_a_join_job_the_claim_cannot_read_for_reads_its_input_itself(
    make_runtime: Callable[..., Runtime],
    redis_conn: Redis,
    monkeypatch: pytest.MonkeyPatch,
    field: str | None,
) -> None:
    """A join queued without what to read for it (by an older ezgraph), or for another version
    of the graph, still gets its whole input: the step reads it as it starts."""
    runtime = make_runtime("tests.graphs.diamond")
    orchestrator = GraphOrchestrator(runtime=runtime)
    run_id = orchestrator.submit("a")
    serve(runtime, ["a", "b", "c"], burst=True, with_scheduler=False, log_level="WARNING")
    join = f"rq:job:{run_id}-d"
    assert redis_conn.hexists(join, GATHER_FIELD)
    if field is None:
        redis_conn.hdel(join, GATHER_FIELD)
    else:
        redis_conn.hset(join, GATHER_FIELD, field.format(run=run_id))
    reads = spy_on_gathers(monkeypatch)

    serve(runtime, ["d"], burst=True, with_scheduler=False, log_level="WARNING")

    status = orchestrator.status(run_id)
    assert status["status"] == "finished"
    assert status["result"]["trail"] == ["a", "c", "d"]
    assert status["result"]["b"] is True and status["result"]["c"] is True
    assert reads == [run_id]
