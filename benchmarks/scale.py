"""Cost against the size of the work: ``python -m benchmarks --scale``.

- **map width**: one run of ``split -> item -> gather`` (``benchmarks/graphs/mapwide``), split
  mapping ``item`` over n items, on 2 ``ezgraph worker``s: steps/s from submit to the run in
  SQL, its ratio to the narrowest map, and the worst round trip of a second client that PINGs
  Redis every 1 ms meanwhile (how long ezgraph's calls blocked Redis);
- **graph size**: one ``ezgraph worker`` serving a 100-node chain against chain5, the same
  number of steps each: steps/s and their ratio (idle marks, claims and watchdog passes must not
  cost per queue per call);
- **backlog**: draining 1,000 queued chain2 runs, then 100,000, on 2 workers: steps/s and
  their ratio (a long queue must not slow a claim);
- **live runs**: one watchdog pass (:func:`ezgraph.recovery.watch_runs`) with 1,000 and with
  100,000 live runs waiting: its time and their ratio (a pass reads a bounded number of runs);
- **bytes per run**: chain2 runs queued, and ended and kept for ``EZGRAPH_RUN_TTL`` once in SQL
  (the bytes of the benchmark db's keys, divided by the runs).
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Sequence

from ezgraph import recovery
from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.settings import Settings
from ezgraph.state.sql import dispose_engines

from .ezgraph_systems import Ezgraph, _environment, sqlite_url
from .harness import GO_KEY, check_alive, connect, flush_bench_db, format_rows
from .soak import keys_bytes


class Pinger(threading.Thread):
    """A second client: PING every ``every`` seconds, keep the worst round trip."""

    def __init__(self, url: str, every: float = 0.001) -> None:
        super().__init__(daemon=True)
        self.conn = connect(url)
        self.every = every
        self.worst = 0.0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            sent = time.perf_counter()
            self.conn.ping()
            self.worst = max(self.worst, time.perf_counter() - sent)
            time.sleep(self.every)

    def stop(self) -> float:
        """Stop; returns the worst round trip in ms."""
        self.stopped.set()
        self.join()
        return self.worst * 1000


def map_width(system: Ezgraph, n: int, workers: int) -> tuple[float, float, str]:
    """One run mapping over ``n`` items: (steps/s, worst PING ms, whether the join's input
    was in item order: yes, no, or the run's status when it did not finish)."""
    conn = system.conn
    flush_bench_db(conn)
    with tempfile.TemporaryDirectory(prefix="ezgraph-scale-") as folder:
        settings = system._settings("mapwide", sqlite_url(folder))
        context = Context(settings, conn)
        context.store.create_schema()
        orchestrator = GraphOrchestrator(context=context)
        procs = system._start_workers(settings, workers)
        try:
            pinger = Pinger(system.url)
            pinger.start()
            started = time.monotonic()
            run_id = orchestrator.submit("split", n=n)
            conn.rpush(GO_KEY, *["go"] * workers)
            while context.store.count_runs() < 1:
                check_alive(procs)
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            worst = pinger.stop()
            stored = context.store.load_run(run_id)
            result = stored.result if stored is not None else None
            in_order = "yes" if isinstance(result, dict) and result.get("in_order") else "no"
            if stored is None or stored.status != "finished":
                in_order = f"run {stored.status if stored else 'missing'}"
        finally:
            system._stop_workers(procs)
            flush_bench_db(conn)
            dispose_engines()
    return (n + 2) / elapsed, worst, in_order


def bytes_per_run(system: Ezgraph, runs: int, workers: int) -> tuple[float, float]:
    """Bytes of a chain2 run queued, and ended and kept once in SQL."""
    conn = system.conn
    flush_bench_db(conn)
    with tempfile.TemporaryDirectory(prefix="ezgraph-scale-") as folder:
        settings: Settings = system._settings("chain2", sqlite_url(folder)).replace(run_ttl=600)
        context = Context(settings, conn)
        context.store.create_schema()
        orchestrator = GraphOrchestrator(context=context)
        _, empty = keys_bytes(conn)
        for run in range(runs):
            orchestrator.submit("a", graph="chain2", run=run)
        _, queued = keys_bytes(conn)
        with _environment(EZGRAPH_RUN_TTL="600"):  # kept while they are measured
            procs = system._start_workers(settings, workers)
        try:
            conn.rpush(GO_KEY, *["go"] * workers)
            while context.store.count_runs() < runs:
                check_alive(procs)
                time.sleep(0.05)
            time.sleep(1.0)  # the last runs marked saved
            conn.delete("bench:done", "bench:t0", "bench:t1", "bench:ready", "bench:go")
            _, ended = keys_bytes(conn)
        finally:
            system._stop_workers(procs)
            flush_bench_db(conn)
            dispose_engines()
    return (queued - empty) / runs, (ended - empty) / runs


def backlog(system: Ezgraph, sizes: Sequence[int] = (1_000, 100_000)) -> list[float]:
    """Steps/s draining ``sizes`` queued chain2 runs (all submitted before the workers go)."""
    return [system.run("chain2", runs).steps_per_s for runs in sizes]


def live_runs(system: Ezgraph, sizes: Sequence[int] = (1_000, 100_000)) -> list[float]:
    """Milliseconds of one watchdog pass (median of 5) with ``sizes`` live runs waiting."""
    conn = system.conn
    passes = []
    for runs in sizes:
        flush_bench_db(conn)
        with tempfile.TemporaryDirectory(prefix="ezgraph-scale-") as folder:
            context = Context(system._settings("chain2", sqlite_url(folder)), conn)
            orchestrator = GraphOrchestrator(context=context)
            orchestrator.submit_many("a", ({"graph": "chain2", "run": r} for r in range(runs)))
            time.sleep(context.tuning.grace + 0.5)  # a pass looks at runs past the grace
            took = []
            for _ in range(5):
                began = time.perf_counter()
                recovery.watch_runs(context, lambda _run_id: None)
                took.append((time.perf_counter() - began) * 1000)
            passes.append(sorted(took)[2])
            flush_bench_db(conn)
            dispose_engines()
    return passes


def graph_size(system: Ezgraph, steps: int = 4_000) -> tuple[float, float]:
    """Steps/s of one ezgraph worker running chain5, then the 100-node chain (``steps`` each)."""
    chain5 = system.run("chain5", steps // 5, workers=1).steps_per_s
    chain100 = system.run("chain100", steps // 100, workers=1).steps_per_s
    return chain5, chain100


def scale(widths: Sequence[int], workers: int = 2) -> list[str]:
    """Measure and format; returns the lines printed."""
    system = Ezgraph("fast")
    system.setup()
    lines: list[str] = []
    try:
        rows = []
        base = None
        for n in widths:
            rate, worst, in_order = map_width(system, n, workers)
            base = base or rate
            rows.append([f"{n:,}", f"{rate:.0f}", f"{rate / base:.2f}x", f"{worst:.1f}", in_order])
            print(f"map {n}: {rate:.0f} steps/s, worst PING {worst:.1f} ms", flush=True)
        lines.append("map width (split -> item x n -> gather), one run, 2 ezgraph workers")
        lines.append(
            format_rows(["items", "steps/s", "vs narrowest", "worst PING ms", "in order"], rows)
        )
        chain5, chain100 = graph_size(system)
        lines.append(
            f"\ngraph size, one ezgraph worker: chain5 {chain5:.0f} steps/s, 100-node chain"
            f" {chain100:.0f} steps/s ({chain100 / chain5:.2f}x)"
        )
        small, big = backlog(system)
        lines.append(
            f"\nbacklog, 2 ezgraph workers: 1,000 queued chain2 runs drained at {small:.0f}"
            f" steps/s, 100,000 at {big:.0f} ({big / small:.2f}x)"
        )
        few, many = live_runs(system)
        lines.append(
            f"\nlive runs: a watchdog pass {few:.1f} ms with 1,000 waiting, {many:.1f} ms with"
            f" 100,000 ({many / few:.2f}x)"
        )
        queued, ended = bytes_per_run(system, 2000, workers)
        lines.append(
            f"\nchain2, Redis bytes per run: queued {queued:,.0f};"
            f" ended and kept for EZGRAPH_RUN_TTL {ended:,.0f}"
        )
    finally:
        system.teardown()
    print("\n".join(lines))
    return lines
