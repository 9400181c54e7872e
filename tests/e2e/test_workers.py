"""Stock ``rq worker`` and ``ezgraph worker`` processes serve ezgraph steps end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis
from rq import Queue

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.state.protocol import JOIN_INPUT_FIELD
from ezgraph.state.runs import RedisRuns
from ezgraph.workers.fast import FastWorker, serve

from ..conftest import ROOT, ezgraph_cli, run_step_here, subprocess_env


def rq_worker_burst(context: Context, *queues: str) -> subprocess.CompletedProcess[str]:
    settings = context.settings
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
    make_context: Callable[..., Context], database_url: str
) -> None:
    context = make_context("tests.graphs.chain", database_url=database_url)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a", question="hoje?")
    done = rq_worker_burst(context, "a", "b")
    assert done.returncode == 0, done.stderr
    stored = context.store.load_run(run_id)
    assert stored is not None and stored.status == "finished"
    assert stored.result == {"question": "hoje?", "trail": ["a", "b"], "a": True, "b": True}


def test_stock_rq_worker_serves_a_joined_graph(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.wide")
    orchestrator = GraphOrchestrator(context=context)
    run_ids = [orchestrator.submit("s") for _ in range(5)]
    done = rq_worker_burst(context, "s", *(f"p{i}" for i in range(8)), "j")
    assert done.returncode == 0, done.stderr
    for run_id in run_ids:
        stored = context.store.load_run(run_id)
        assert stored is not None and stored.status == "finished"
        assert len(stored.steps) == 10
        assert sorted(stored.result["trail"])[-1] == "s"


def test_ezgraph_worker_burst_serves_every_node_by_default(
    make_context: Callable[..., Context],
) -> None:
    context = make_context("tests.graphs.diamond")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a")
    done = ezgraph_cli("worker", "--burst", env=subprocess_env(context.settings))
    assert done.returncode == 0, done.stderr
    stored = context.store.load_run(run_id)
    assert stored is not None and stored.status == "finished"
    assert [s.step for s in stored.steps] == ["a", "b", "c", "d"]


def test_ezgraph_worker_takes_later_steps_of_started_runs_before_new_runs(
    make_context: Callable[..., Context],
) -> None:
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    run_ids = [orchestrator.submit("a") for _ in range(3)]
    serve(context, burst=True, with_scheduler=False, log_level="WARNING", claim_batch=1)
    started = []
    for n, run_id in enumerate(run_ids):
        stored = context.store.load_run(run_id)
        assert stored is not None and stored.status == "finished"
        started += [(step.started_at, f"{step.step}{n}") for step in stored.steps]
    # Sink first: each run's b runs before the next run's a (declared order: a0 a1 a2 b0 b1 b2).
    assert [name for _, name in sorted(started)] == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_ezgraph_worker_refuses_an_unknown_node(make_context: Callable[..., Context]) -> None:
    context = make_context("tests.graphs.chain")
    done = ezgraph_cli("worker", "nope", "--burst", env=subprocess_env(context.settings))
    assert done.returncode == 2
    assert done.stderr.strip() == "error: unknown node 'nope' (graph nodes: a, b)"


def test_rq_worker_with_the_fast_worker_class_runs_a_chain(
    make_context: Callable[..., Context],
) -> None:
    context = make_context("tests.graphs.chain")
    run_id = GraphOrchestrator(context=context).submit("a")
    settings = context.settings
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
    stored = context.store.load_run(run_id)
    assert stored is not None and stored.status == "finished"


def test_a_successor_wakes_its_queue_only_while_an_ezgraph_worker_waits_on_it(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """An idle ezgraph worker blocks on its queues' wake lists and wakes when a job arrives; a queue
    nobody waits on (its workers are busy, or stock workers) costs no wake-up per job."""
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    wake = "ezgraph:wake:b"

    def run_a() -> str:
        run_id = orchestrator.submit("a")
        run_step_here(context, run_id, "a", "tests.graphs.chain", {})
        return run_id

    first = run_a()
    assert redis_conn.llen(wake) == 0  # no ezgraph worker waits on b
    worker = FastWorker([Queue("b", connection=redis_conn)], connection=redis_conn, context=context)
    assert [job.id for job in worker._finish_and_claim(["b"], 8)] == [f"{first}-b"]
    run_a()
    assert redis_conn.llen(wake) == 0  # the worker is busy: it claims again when done
    assert worker._finish_and_claim(["b"], 8) != []
    assert (
        worker._finish_and_claim(["b"], 8) == []
    )  # nothing left: the worker waits on b's wake list
    third = run_a()
    assert redis_conn.blpop([wake], timeout=1) is not None
    assert [job.id for job in worker._finish_and_claim(["b"], 8)] == [f"{third}-b"]


def test_a_successor_its_own_worker_claims_in_the_same_call_wakes_nobody(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """The call that finishes a step claims after creating its successors: a successor that
    worker takes itself wakes nobody, one left in the queue wakes an idle worker."""
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    wake = "ezgraph:wake:b"
    idle = FastWorker([Queue("b", connection=redis_conn)], connection=redis_conn, context=context)

    def finish_a(queues: list[str]) -> list[str]:
        """A worker of ``queues`` claims and runs a new run's step a, then makes its next call."""
        worker = FastWorker(
            [Queue(name, connection=redis_conn) for name in queues],
            connection=redis_conn,
            context=context,
        )
        orchestrator.submit("a")
        (claimed,) = worker._finish_and_claim(["a"], 8)
        worker._perform(claimed)
        assert len(worker._pending) == 1  # it succeeded: the next call finishes it
        return [job.id for job in worker._finish_and_claim(queues, 8)]

    assert idle._finish_and_claim(["b"], 8) == []  # idle: waits on b's wake list
    redis_conn.delete(wake)
    claimed = finish_a(["a", "b"])
    assert [job_id.rsplit("-", 1)[1] for job_id in claimed] == ["b"]
    assert redis_conn.llen(wake) == 0
    assert finish_a(["a"]) == []  # b waits in its queue for the idle worker
    assert redis_conn.llen(wake) == 1


def spy_on_gathers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The runs whose join read its input itself (RedisRuns.read_join_input), in call order."""
    reads: list[str] = []
    original = RedisRuns.read_join_input

    def read_join_input(
        runs: RedisRuns, spec: str, predecessors: Any, states: Any, chunk: int
    ) -> Any:
        reads.append(json.loads(spec)["run"])
        return original(runs, spec, predecessors, states, chunk)

    monkeypatch.setattr(RedisRuns, "read_join_input", read_join_input)
    return reads


@pytest.mark.parametrize(("items", "reads_itself"), [([3, 1, 2], False), (list(range(1001)), True)])
def test_the_ezgraph_worker_hands_a_join_its_input_with_the_claim(
    make_context: Callable[..., Context],
    monkeypatch: pytest.MonkeyPatch,
    items: list[int],
    reads_itself: bool,
) -> None:
    """The claim of a join reads its predecessors' outputs and states (no round trip of the
    step's own), except for a map too large to read in one call."""
    reads = spy_on_gathers(monkeypatch)
    diamond = make_context("tests.graphs.diamond")
    orchestrator = GraphOrchestrator(context=diamond)
    run_id = orchestrator.submit("a")
    serve(diamond, burst=True, with_scheduler=False, log_level="WARNING")
    result = orchestrator.status(run_id)["result"]
    assert result["trail"] == ["a", "c", "d"] and result["b"] is True and result["c"] is True

    mapped = make_context("tests.graphs.mapped")
    orchestrator = GraphOrchestrator(context=mapped)
    map_run = orchestrator.submit("m", items=items)
    serve(mapped, burst=True, with_scheduler=False, log_level="WARNING")
    status = orchestrator.status(map_run)
    assert status["status"] == "finished"
    assert status["result"]["values"] == [i * i for i in items]
    assert reads == ([map_run] if reads_itself else [])


@pytest.mark.parametrize(
    "field", [None, '{{"run": "{run}", "predecessors": ["b"], "states": ["b"]}}', "not json"]
)
def test_a_join_job_the_claim_cannot_read_for_reads_its_input_itself(
    make_context: Callable[..., Context],
    redis_conn: Redis,
    monkeypatch: pytest.MonkeyPatch,
    field: str | None,
) -> None:
    """A join queued without what to read for it (by an older ezgraph), or for another version
    of the graph, still gets its whole input: the step reads it as it starts."""
    context = make_context("tests.graphs.diamond")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a")
    serve(context, ["a", "b", "c"], burst=True, with_scheduler=False, log_level="WARNING")
    join = f"rq:job:{run_id}-d"
    assert redis_conn.hexists(join, JOIN_INPUT_FIELD)
    if field is None:
        redis_conn.hdel(join, JOIN_INPUT_FIELD)
    else:
        redis_conn.hset(join, JOIN_INPUT_FIELD, field.format(run=run_id))
    reads = spy_on_gathers(monkeypatch)

    serve(context, ["d"], burst=True, with_scheduler=False, log_level="WARNING")

    status = orchestrator.status(run_id)
    assert status["status"] == "finished"
    assert status["result"]["trail"] == ["a", "c", "d"]
    assert status["result"]["b"] is True and status["result"]["c"] is True
    assert reads == [run_id]
