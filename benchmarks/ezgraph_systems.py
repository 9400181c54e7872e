"""ezgraph as a system under test: its fast worker, and stock RQ SimpleWorkers running its steps.

Same harness as the baselines (ready/go barrier, first-start mark by the source step), with
one stricter rule: a run counts as done only once it is **in the SQL database** (SQLite in a
fresh temporary folder, or, for ``ezgraph-fast-pg``, PostgreSQL in a schema made for the
measurement and dropped after), so the window ends when the last run was persisted, not when
its last step finished.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen

import sqlalchemy

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.settings import Settings
from ezgraph.state.keys import Keys
from ezgraph.state.sql import dispose_engines

from .harness import (
    DONE_KEY,
    GO_KEY,
    GRAPHS,
    START_KEY,
    CommandMeter,
    CpuMeter,
    Measurement,
    WorkerSystem,
    check_alive,
    flush_bench_db,
    latency,
    make_measurement,
    max_rss_mb,
    python_args,
    spawn,
    steps_per_run,
    wait_alive,
    wait_done,
    wait_ready,
)

LATENCY_WARMUP = 5


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


POSTGRES_URL_ENV = "BENCH_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def sqlite_url(folder: str) -> str:
    """The URL of a measurement's SQLite database in ``folder``."""
    return f"sqlite:///{Path(folder) / 'bench.db'}"


@contextlib.contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    """A URL of PostgreSQL at ``base_url`` scoped to a new schema, dropped on exit."""
    schema = f"ezgraph_bench_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(base_url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"create schema {schema}"))
        yield f"{base_url}?options=-csearch_path%3D{schema}"
    finally:
        dispose_engines()
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"drop schema if exists {schema} cascade"))
        engine.dispose()


class Ezgraph(WorkerSystem):
    """ezgraph with ``kind`` workers: ``fast`` (``ezgraph worker``) or ``stock`` (SimpleWorker);
    runs written to SQLite, or with ``postgres`` to PostgreSQL (``$BENCH_POSTGRES_URL``)."""

    def __init__(self, kind: str = "fast", url: str | None = None, postgres: bool = False) -> None:
        super().__init__(url)
        self.kind = kind
        self.name = f"ezgraph-{kind}" + ("-pg" if postgres else "")
        self.postgres_url = (
            os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL) if postgres else None
        )
        self.missing = "PostgreSQL does not answer at $BENCH_POSTGRES_URL"

    def available(self) -> bool:
        if self.postgres_url is None:
            return True
        try:
            engine = sqlalchemy.create_engine(self.postgres_url)
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("select 1"))
            engine.dispose()
        except Exception:
            return False
        return True

    def teardown(self) -> None:
        super().teardown()
        dispose_engines()

    @contextlib.contextmanager
    def _database(self, folder: str) -> Iterator[str]:
        """The database URL of one measurement: a fresh SQLite file, or PostgreSQL schema."""
        if self.postgres_url is None:
            yield sqlite_url(folder)
        else:
            with postgres_schema(self.postgres_url) as url:
                yield url

    def _settings(self, graph: str, database_url: str) -> Settings:
        return Settings(
            redis_url=self.url,
            database_url=database_url,
            modules_package=f"benchmarks.graphs.{graph}",
        )

    def _start_workers(self, settings: Settings, workers: int) -> list[Popen[bytes]]:
        procs = []
        with _environment(
            REDIS_URL=self.url,
            DATABASE_URL=settings.database_url,
            EZGRAPH_MODULES=settings.modules_package or "",
        ):
            for i in range(workers):
                args = python_args("-m", "benchmarks.ezgraph_workers", self.kind)
                procs.append(spawn(args, f"{self.name}-{i}.log"))
            if self.kind == "stock":
                # As the README runs stock workers: one process writes every worker's ended
                # runs to SQL (its CPU and memory are measured with the workers').
                follow = python_args("-m", "ezgraph", "persist", "--follow")
                procs.append(spawn(follow, f"{self.name}-persist.log"))
        self._procs.extend(procs)
        wait_ready(self.conn, workers, procs)
        if self.kind == "stock":
            key = Keys(settings.key_prefix).follower
            wait_alive(lambda: bool(self.conn.exists(key)), procs, 30, "persist --follow")
        return procs

    def run(self, graph: str, runs: int, workers: int = 2) -> Measurement:
        flush_bench_db(self.conn)
        procs: list[Popen[bytes]] = []
        with (
            tempfile.TemporaryDirectory(prefix="ezgraph-bench-") as folder,
            self._database(folder) as database_url,
        ):
            settings = self._settings(graph, database_url)
            context = Context(settings, self.conn)
            context.store.create_schema()
            orchestrator = GraphOrchestrator(context=context)
            try:
                procs = self._start_workers(settings, workers)
                meter = CommandMeter(self.conn)
                start = orchestrator.graph.nodes[0]
                orchestrator.submit_many(start, ({"graph": graph, "run": r} for r in range(runs)))
                cpu = CpuMeter(self.conn, procs, meter)
                self.conn.rpush(GO_KEY, *["go"] * workers)
                meter.count_own()
                timeout = 60.0 + runs * steps_per_run(GRAPHS[graph]) / 20.0
                rss = wait_done(self.conn, runs, procs, meter, timeout)
                persisted = 0
                deadline = time.monotonic() + timeout
                while persisted < runs:
                    check_alive(procs)
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"only {persisted}/{runs} runs reached SQL")
                    persisted = context.store.count_runs()
                    if persisted < runs:
                        time.sleep(0.005)
                ended = time.time()
                used = cpu.stop()
                rss = max(rss, max_rss_mb(procs))
                commands = meter.stop(runs)
                started = float(self.conn.zscore(START_KEY, "t") or ended)
            finally:
                self._stop_workers(procs)
                flush_bench_db(self.conn)
                dispose_engines()
        return make_measurement(
            self.name, graph, runs, ended - started, commands, rss, meter.problems, used
        )

    def latency(self, n: int) -> list[tuple[str, float, float]]:
        """Submit-to-result of single 2-node runs on idle workers: the result read from Redis
        once the sink marked its end (as for the baselines), then through the public API,
        ``GraphOrchestrator.wait`` (its status read twice and a pub/sub subscription)."""
        flush_bench_db(self.conn)
        procs: list[Popen[bytes]] = []
        counter = iter(range(1 << 30))
        with (
            tempfile.TemporaryDirectory(prefix="ezgraph-bench-") as folder,
            self._database(folder) as database_url,
        ):
            settings = self._settings("chain2", database_url)
            context = Context(settings, self.conn)
            context.store.create_schema()
            orchestrator = GraphOrchestrator(context=context)
            try:
                procs = self._start_workers(settings, 2)
                self.conn.rpush(GO_KEY, "go", "go")

                def submit_and_wait() -> None:
                    run_id = orchestrator.submit("a", graph="chain2", run=next(counter))
                    if self.conn.blpop([DONE_KEY], timeout=30) is None:
                        check_alive(procs)
                        raise TimeoutError("run did not finish within 30s")
                    # The sink marked its end; the result is visible once the run has ended.
                    # Polled every 0.1 ms: a tight loop would take a core and Redis time from
                    # the workers finishing the run.
                    key = context.keys.run(run_id)
                    while not self.conn.hexists(key, "ended_at"):
                        time.sleep(0.0001)

                def submit_and_wait_api() -> None:
                    run_id = orchestrator.submit("a", graph="chain2", run=next(counter))
                    if orchestrator.wait(run_id, timeout=30)["status"] != "finished":
                        check_alive(procs)
                        raise TimeoutError("run did not finish within 30s")

                marks = latency(submit_and_wait, n, LATENCY_WARMUP)
                api = latency(submit_and_wait_api, n, LATENCY_WARMUP)
                return [(self.name, *marks), (f"{self.name} via wait()", *api)]
            finally:
                self._stop_workers(procs)
                flush_bench_db(self.conn)
                dispose_engines()
