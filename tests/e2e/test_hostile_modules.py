"""Modules that try to take their worker down: the step fails (or the worker replaces itself),
the run ends, no ghost process survives, and the worker goes on serving."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context

from ..conftest import ezgraph_cli, ezgraph_process, subprocess_env, wait_for

GRAPH = "tests.graphs.hostile"


def children(pid: int) -> list[tuple[int, str]]:
    """The running (not zombie) children of process ``pid``: (pid, state)."""
    listing = subprocess.run(
        ["ps", "-o", "pid=,stat=", "--ppid", str(pid)], capture_output=True, text=True
    ).stdout
    found = [(int(p), s) for p, s in (line.split() for line in listing.strip().splitlines())]
    return [(child, state) for child, state in found if not state.startswith("Z")]


@pytest.mark.parametrize(
    ("node", "what"),
    [
        ("exits", "SystemExit"),
        ("raises_exit", "SystemExit(3)"),
        ("interrupts", "KeyboardInterrupt"),
    ],
)
@pytest.mark.parametrize("worker_kind", ["ezgraph", "stock"])
def test_a_module_that_ends_its_process_fails_its_step_and_the_worker_goes_on(
    make_context: Callable[..., Context], redis_url: str, node: str, what: str, worker_kind: str
) -> None:
    context = make_context(GRAPH)
    orchestrator = GraphOrchestrator(context=context)
    env = subprocess_env(context.settings)
    hostile = orchestrator.submit(node)
    plain = orchestrator.submit("after")
    if worker_kind == "ezgraph":
        worker = ezgraph_process("worker", node, "after", env=env)
    else:
        args = [
            "rq.cli",
            "worker",
            node,
            "after",
            "--url",
            redis_url,
            "-w",
            "rq.worker.SimpleWorker",
        ]
        worker = subprocess.Popen(
            ["python", "-m", *args], env=env, stderr=subprocess.PIPE, text=True
        )
    try:
        wait_for(lambda: orchestrator.status(plain)["status"] == "finished", 30, "the plain run")
        wait_for(lambda: orchestrator.status(hostile)["status"] == "failed", 30, "the step to fail")
        assert worker.poll() is None  # it did not end the worker
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
    assert orchestrator.status(hostile)["error"] == (
        f"{node}: StepError: node {node!r} tried to end its worker process ({what});"
        " the step fails instead"
    )


def test_a_module_that_forks_leaves_no_ghost_worker(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """The child of a fork inside a module returns into the worker: it exits there instead of
    going on as a second worker taking jobs; the step's run goes on in the parent."""
    context = make_context(GRAPH)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("forks")
    worker = ezgraph_process("worker", "forks", "after", env=subprocess_env(context.settings))
    try:
        wait_for(lambda: orchestrator.status(run_id)["status"] == "finished", 30, "the run")
        time.sleep(0.5)
        assert children(worker.pid) == []  # the forked child exited
        assert len(redis_conn.smembers("ezgraph:workers")) == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        _, errors = worker.communicate(timeout=30)
    assert worker.returncode == 0
    assert "forked; its child" in errors


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_module_that_ignores_its_timeout_ends_its_worker_until_the_death_bound_fails_it(
    make_context: Callable[..., Context], redis_conn: Redis, redis_url: str
) -> None:
    """The stubborn module catches the timeout and runs on: past its timeout plus the grace its
    worker gives its claims back (counting a death) and replaces itself; the fourth time the
    step fails, and its run."""
    context = make_context(GRAPH)
    orchestrator = GraphOrchestrator(context=context)
    ledger = "test:stubborn"
    run_id = orchestrator.submit("stubborn", ledger_url=redis_url, ledger_key=ledger)
    worker = ezgraph_process("worker", "stubborn", env=subprocess_env(context.settings))
    try:
        wait_for(lambda: orchestrator.status(run_id)["status"] == "failed", 120, "the step to fail")
        wait_for(lambda: len(redis_conn.keys("ezgraph:alive:*")) >= 1, 30, "the worker's return")
        assert worker.poll() is None  # the same process, replaced by exec, still serves
    finally:
        worker.send_signal(signal.SIGTERM)
        _, errors = worker.communicate(timeout=60)
    pids = {int(p) for p in redis_conn.lrange(ledger, 0, -1)}
    assert redis_conn.llen(ledger) == 4 and pids == {worker.pid}
    assert orchestrator.status(run_id)["error"] == (
        "stubborn: ran past its timeout of 1 s and did not stop, 4 times"
    )
    assert errors.count("the worker replaces itself") == 4


@pytest.mark.slow
def test_sigterm_stops_a_worker_within_its_grace_whatever_its_step_does(
    make_context: Callable[..., Context], redis_conn: Redis, redis_url: str
) -> None:
    context = make_context(GRAPH, job_timeout=600)
    orchestrator = GraphOrchestrator(context=context)
    ledger = "test:stubborn"
    stuck = orchestrator.submit("holds", ledger_url=redis_url, ledger_key=ledger)
    worker = ezgraph_process("worker", "holds", env=subprocess_env(context.settings))
    wait_for(lambda: redis_conn.llen(ledger) == 1, 30, "the stubborn step to start")
    worker.send_signal(signal.SIGTERM)
    started = time.monotonic()
    worker.communicate(timeout=60)
    took = time.monotonic() - started
    assert took < context.tuning.stop_grace + 3
    # Given back, uncounted (the step is not at fault): it runs again elsewhere.
    assert redis_conn.lrange("rq:queue:holds", 0, -1) == [f"{stuck}-holds".encode()]
    assert redis_conn.hget(f"rq:job:{stuck}-holds", "ezgraph_lost") is None
    assert not os.path.exists(f"/proc/{worker.pid}")


def test_a_modules_package_that_exits_on_import_is_one_line(
    make_context: Callable[..., Context],
) -> None:
    context = make_context(GRAPH)
    env = subprocess_env(context.settings)
    done = ezgraph_cli("-m", "tests.graphs.exits_on_import", "check", env=env)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: importing 'tests.graphs.exits_on_import' failed: SystemExit: 3"
    )
