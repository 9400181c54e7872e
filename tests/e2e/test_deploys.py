"""A deploy while runs are live: runs keep the graph they started on, and fail in one line
when the new workers no longer have a node they need (never hang, never crash a worker)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.settings import Settings

from ..conftest import ROOT, ezgraph_cli, ezgraph_process, subprocess_env, wait_for

V1 = 'GRAPH_CONNECTIONS = {"a": ["b"], "b": ["c"], "c": []}\n'
REMOVED = 'GRAPH_CONNECTIONS = {"a": ["c"], "c": []}\n'  # b is gone
EXTENDED = 'GRAPH_CONNECTIONS = {"a": ["b"], "b": ["c"], "c": ["d"], "d": []}\n'
MODULES = "MODULES = {node: 'tests.steps:mark' for node in GRAPH_CONNECTIONS}\n"


def deploy(folder: Path, graph: str) -> None:
    package = folder / "deployed"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text(graph + MODULES)


def deployment(
    folder: Path, redis_url: str, sqlite_url: str, make: Callable[..., Context]
) -> tuple[Context, dict[str, str]]:
    """Runs submitted on V1 (by this process), and the environment of the new workers."""
    deploy(folder, V1)
    sys.path.insert(0, str(folder))
    try:
        context = make("deployed")
        context.graph()  # V1, kept by this process
    finally:
        sys.path.remove(str(folder))
    settings = Settings(redis_url=redis_url, database_url=sqlite_url, modules_package="deployed")
    env = subprocess_env(settings)
    env["PYTHONPATH"] = f"{ROOT}:{folder}"
    return context, env


@pytest.mark.slow
def test_a_run_whose_next_node_a_deploy_removed_fails_in_one_line_naming_both_versions(
    tmp_path: Path, redis_url: str, sqlite_url: str, make_context: Callable[..., Context]
) -> None:
    context, env = deployment(tmp_path, redis_url, sqlite_url, make_context)
    orchestrator = GraphOrchestrator(context=context)
    old_version = context.graph().version
    run_ids = [orchestrator.submit("a") for _ in range(20)]
    deploy(tmp_path, REMOVED)
    check = ezgraph_cli("check", "--live", env=env)
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"20 live runs started on graph {old_version} would be stranded" in check.stdout
    assert f"{run_ids[0]}: b" in check.stdout
    worker = ezgraph_process("worker", env=env)
    try:
        wait_for(
            lambda: all(orchestrator.status(r)["status"] == "failed" for r in run_ids),
            30,
            "the runs to fail",
        )
        assert worker.poll() is None  # no worker crashed on them
    finally:
        worker.send_signal(signal.SIGTERM)
        _, errors = worker.communicate(timeout=30)
    assert worker.returncode == 0, errors
    error = orchestrator.status(run_ids[0])["error"]
    new_version = check.stdout.split("this graph (version ")[1].split(")")[0]
    assert error == (
        f"a: StepError: node 'b' of the run's graph (version {old_version}) is not in this"
        f" worker's graph (version {new_version}): the run cannot go on"
    )
    assert "\n" not in error


@pytest.mark.slow
def test_a_run_live_across_a_deploy_that_adds_a_node_finishes_on_its_own_graph(
    tmp_path: Path,
    redis_url: str,
    sqlite_url: str,
    make_context: Callable[..., Context],
    redis_conn: Redis,
) -> None:
    context, env = deployment(tmp_path, redis_url, sqlite_url, make_context)
    orchestrator = GraphOrchestrator(context=context)
    old = orchestrator.submit("a")
    deploy(tmp_path, EXTENDED)
    assert ezgraph_cli("check", "--live", env=env).returncode == 0  # nothing stranded
    worker = ezgraph_process("worker", env=env)
    try:
        new = ezgraph_cli("submit", "a", "--wait", env=env).stdout.strip().splitlines()[-1]
        wait_for(lambda: orchestrator.status(old)["status"] == "finished", 30, "the old run")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
    assert orchestrator.status(old)["nodes"] == {"a": "finished", "b": "finished", "c": "finished"}
    assert orchestrator.status(new)["nodes"] == {n: "finished" for n in "abcd"}
