"""Submission speed from one process: runs created per second, no worker running.

    python -m benchmarks --submit                    # 5,000 runs per way, 3 interleaved reps
    python -m benchmarks --submit --submit-runs 20000 --reps 5

Each way submits chain2 runs (a -> b) to the benchmark's Redis db, which is flushed between
measurements: the seed's ``ezgraph.submit`` as it was (a new orchestrator per call), the
module-level ``ezgraph.submit`` now (one orchestrator per process and settings), a reused
``GraphOrchestrator.submit``, the same with an idempotency key (a claim, a read of the SQLite
database, a create), ``GraphOrchestrator.submit_many`` (chunks of ``Tuning.submit_chunk``
runs, one Redis call each; ten times the runs), and plain RQ's ``Queue.enqueue`` for scale.
It prints the median runs/s, this process's CPU per run and Redis's, against the targets of
2,000 runs/s for ``submit`` and 10,000 for ``submit_many``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from redis import Redis
from rq import Queue

import ezgraph
from ezgraph.client import GraphOrchestrator
from ezgraph.settings import Settings
from ezgraph.state.sql import dispose_engines

from .harness import connect, flush_bench_db, format_rows, redis_cpu_seconds
from .tasks_rq import step

GRAPH = "benchmarks.graphs.chain2"
TARGETS = {"ezgraph.submit (shared)": 2_000, "submit_many": 10_000}


def _ways(folder: Path, redis_url: str) -> dict[str, tuple[Callable[[int], None], int]]:
    """Each way to submit ``n`` runs, and how many runs it is given (a multiple of ``runs``)."""
    os.environ.update(
        REDIS_URL=redis_url,
        DATABASE_URL=f"sqlite:///{folder / 'bench.db'}",
        EZGRAPH_MODULES=GRAPH,
    )
    orchestrator = GraphOrchestrator(Settings.from_env())
    orchestrator.context.store.create_schema()
    queue = Queue("a", connection=orchestrator.context.connection)
    keys = iter(range(1 << 62))

    def seed_submit(n: int) -> None:  # the seed's module-level submit: an orchestrator a call
        for i in range(n):
            GraphOrchestrator(Settings.from_env()).submit("a", graph="chain2", run=i)

    def shared_submit(n: int) -> None:
        for i in range(n):
            ezgraph.submit("a", graph="chain2", run=i)

    def reused_submit(n: int) -> None:
        for i in range(n):
            orchestrator.submit("a", graph="chain2", run=i)

    def keyed_submit(n: int) -> None:
        for i in range(n):
            orchestrator.submit("a", graph="chain2", run=i, idempotency_key=f"k{next(keys)}")

    def many(n: int) -> None:
        orchestrator.submit_many("a", [{"graph": "chain2", "run": i} for i in range(n)])

    def enqueue(n: int) -> None:
        for i in range(n):
            queue.enqueue(step, "chain2", "a", i)  # never run: no worker

    return {
        "seed's submit (new orchestrator a call)": (seed_submit, 1),
        "ezgraph.submit (shared)": (shared_submit, 1),
        "GraphOrchestrator.submit": (reused_submit, 1),
        "submit with idempotency_key": (keyed_submit, 1),
        "submit_many": (many, 10),
        "plain RQ Queue.enqueue": (enqueue, 1),
    }


def measure(redis_url: str, runs: int, reps: int) -> list[str]:
    """Time each way ``reps`` times, interleaved; the table's lines."""
    conn = connect(redis_url)
    saved = {
        name: os.environ.get(name) for name in ("REDIS_URL", "DATABASE_URL", "EZGRAPH_MODULES")
    }
    results: dict[str, list[tuple[float, float, float]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="ezgraph-bench-") as folder:
            ways = _ways(Path(folder), redis_url)
            for submit, _times in ways.values():  # warm up: imports, scripts, schema
                submit(10)
            for _ in range(reps):
                for way, (submit, times) in ways.items():
                    results.setdefault(way, []).append(_time(conn, submit, runs * times))
            flush_bench_db(conn)
            dispose_engines()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    rows = []
    for way, samples in results.items():
        rate = statistics.median(s[0] for s in samples)
        target = TARGETS.get(way)
        rows.append(
            [
                way,
                f"{rate:,.0f}",
                f"({min(s[0] for s in samples):,.0f}-{max(s[0] for s in samples):,.0f})",
                f"{statistics.median(s[1] for s in samples):.0f}",
                f"{statistics.median(s[2] for s in samples):.0f}",
                f">= {target:,}: {'met' if rate >= target else 'NOT met'}" if target else "",
            ]
        )
    header = [
        "way (chain2, one process)",
        "runs/s",
        "(reps)",
        "client CPU us/run",
        "Redis CPU us/run",
        "target",
    ]
    return [
        f"submission, {runs} runs per way (submit_many: {runs * 10}), {reps} reps",
        format_rows(header, rows),
    ]


def _time(conn: Redis, submit: Callable[[int], None], n: int) -> tuple[float, float, float]:
    """Runs/s, this process's CPU µs per run and Redis's, of submitting ``n`` runs."""
    flush_bench_db(conn)
    redis_before, cpu_before = redis_cpu_seconds(conn), time.process_time()
    started = time.perf_counter()
    submit(n)
    seconds = time.perf_counter() - started
    cpu, redis = time.process_time() - cpu_before, redis_cpu_seconds(conn) - redis_before
    return n / seconds, cpu / n * 1e6, redis / n * 1e6
