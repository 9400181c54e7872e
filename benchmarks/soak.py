"""The soak: chain2 runs submitted at a fixed rate for a while, Redis memory watched.

``python -m benchmarks --soak SECONDS`` first measures the maximum rate of 2 ``ezgraph worker``s
on chain2 (a burst of runs, as the main benchmark does), then submits runs at 70% of it
(``--soak-rate`` for another rate) from this process for SECONDS, printing every 10 s Redis's
``used_memory`` and the bytes of the benchmark db's keys (the figure the target reads: other
dbs of a shared Redis move ``used_memory``), the runs submitted and in SQL. Redis must hold
only the work in flight: the target is a flat memory (over the second half, a slope under 1%
of its level per minute) under 300 MB.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence

from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.state.sql import dispose_engines

from .ezgraph_systems import Ezgraph, sqlite_url
from .harness import DONE_KEY, GO_KEY, check_alive, flush_bench_db

SAMPLE_EVERY = 10.0
MAX_MEMORY_MB = 300.0
MAX_SLOPE = 0.01  # of the level, per minute


def keys_bytes(conn: Redis) -> tuple[int, int]:
    """How many keys the benchmark's db holds and their bytes (``MEMORY USAGE``, pipelined):
    ``used_memory`` is the server's, which other dbs' clients move too."""
    total = count = 0
    batch: list[bytes] = []
    for key in conn.scan_iter(count=1000):
        batch.append(key)
        if len(batch) == 1000:
            total += _usage(conn, batch)
            count += len(batch)
            batch = []
    return count + len(batch), total + _usage(conn, batch)


def _usage(conn: Redis, keys: Sequence[bytes]) -> int:
    pipe = conn.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return sum(int(n or 0) for n in pipe.execute())


def slope_per_minute(samples: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of ``(seconds, value)`` samples, per minute."""
    times = [t for t, _ in samples]
    values = [v for _, v in samples]
    return statistics.linear_regression(times, values).slope * 60.0


def soak(seconds: float, rate: float | None, workers: int = 2) -> list[str]:
    """Run the soak; returns the lines to print (they are printed as it goes, too)."""
    system = Ezgraph("fast")
    system.setup()
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    try:
        if rate is None:
            burst = system.run("chain2", 2000, workers)
            rate = 0.7 * burst.runs_per_s
            say(f"maximum: {burst.runs_per_s:.0f} runs/s (2,000 chain2 runs); soak at 70%")
        samples = _submit_at(system, rate, seconds, workers, say)
    finally:
        system.teardown()
    second_half = [(t, mb) for t, mb in samples if t >= seconds / 2]
    level = statistics.fmean(mb for _, mb in second_half)
    slope = slope_per_minute(second_half) if len(second_half) >= 2 else float("nan")
    peak = max(mb for _, mb in samples)
    flat = abs(slope) < MAX_SLOPE * level
    say(
        f"second half: level {level:.1f} MB, slope {slope:+.2f} MB/min"
        f" ({slope / level:+.2%} of the level per minute; target under 1%: "
        f"{'met' if flat else 'NOT met'}); peak {peak:.1f} MB (target under"
        f" {MAX_MEMORY_MB:.0f} MB: {'met' if peak < MAX_MEMORY_MB else 'NOT met'})"
    )
    return lines


def _submit_at(
    system: Ezgraph, rate: float, seconds: float, workers: int, say: object
) -> list[tuple[float, float]]:
    """Submit chain2 runs at ``rate`` for ``seconds``; returns ``(elapsed, used_memory MB)``
    every 10 s."""
    assert callable(say)
    conn = system.conn
    flush_bench_db(conn)
    samples: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="ezgraph-soak-") as folder:
        settings = system._settings("chain2", sqlite_url(folder))
        context = Context(settings, conn)
        context.store.create_schema()
        orchestrator = GraphOrchestrator(context=context)
        procs = system._start_workers(settings, workers)
        try:
            conn.rpush(GO_KEY, *["go"] * workers)
            say(
                f"soak: chain2 at {rate:.0f} runs/s for {seconds:.0f} s,"
                f" EZGRAPH_RUN_TTL {settings.run_ttl} s"
            )
            say("   s  submitted  runs/s   in SQL   live  unsaved    keys  keys MB  used_memory MB")
            started = time.monotonic()
            submitted = 0
            next_sample = SAMPLE_EVERY
            while (elapsed := time.monotonic() - started) < seconds:
                due = int(elapsed * rate) - submitted
                for _ in range(min(due, 500)):
                    orchestrator.submit("a", graph="chain2", run=submitted)
                    submitted += 1
                if due <= 0:
                    time.sleep(0.002)
                if elapsed >= next_sample:
                    check_alive(procs)
                    conn.delete(DONE_KEY)  # the benchmark's own end marks: not ezgraph's
                    memory = int(conn.info("memory")["used_memory"]) / 1e6
                    count, own = keys_bytes(conn)
                    samples.append((elapsed, own / 1e6))
                    say(
                        f"{elapsed:4.0f}  {submitted:9d}  {submitted / elapsed:6.0f}"
                        f"  {context.store.count_runs():7d}"
                        f"  {conn.zcard(context.keys.live_runs):5d}"
                        f"  {context.runs.unsaved_count():7d}  {count:6d}  {own / 1e6:7.1f}"
                        f"  {memory:14.1f}"
                    )
                    next_sample += SAMPLE_EVERY
        finally:
            system._stop_workers(procs)
            flush_bench_db(conn)
            dispose_engines()
    return samples
