"""Cost against the size of the work: ``python -m benchmarks --scale``.

- **map width**: one run of ``split -> item -> gather`` (``benchmarks/graphs/mapwide``), split
  mapping ``item`` over n items, on 2 ``ezgraph worker``s: steps/s from submit to the run in
  SQL, its ratio to the narrowest map, the worst round trip of a second client that PINGs
  Redis every 1 ms meanwhile, and the slowest call ezgraph sent, as Redis's SLOWLOG timed it
  (how long one call blocked Redis; the PING adds the client's scheduling);
- **graph size**: one ``ezgraph worker`` serving a 100-node chain against chain5, the same
  number of steps each: steps/s and their ratio (idle marks, claims and watchdog passes must not
  cost per queue per call);
- **backlog**: draining 1,000 queued chain2 runs, then 100,000, on 2 workers: steps/s and
  their ratio (a long queue must not slow a claim);
- **live runs**: with 1,000 and with 100,000 live runs waiting, one watchdog pass
  (:func:`ezgraph.recovery.watch_runs`) and the hand-over of 500 ended runs to SQL
  (:meth:`ezgraph.handover.RunWriter.write_unsaved`): their times and ratios (neither may read
  every live run);
- **bytes per run**: chain2 runs queued, and ended and kept for ``EZGRAPH_RUN_TTL`` once in SQL
  (the bytes of the benchmark db's keys, divided by the runs).
"""

from __future__ import annotations

import hashlib
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple

from redis import Redis
from redis.exceptions import BusyLoadingError, ResponseError

from ezgraph import recovery
from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.handover import RunWriter
from ezgraph.settings import Settings
from ezgraph.state.redis_io import script_sources
from ezgraph.state.sql import dispose_engines
from ezgraph.workers.fast import serve

from .ezgraph_systems import Ezgraph, _environment, sqlite_url
from .harness import GO_KEY, check_alive, connect, flush_bench_db, format_rows, max_rss_mb
from .soak import keys_bytes


class Pinger(threading.Thread):
    """A second client: PING every ``every`` seconds, keep the worst round trip and count the
    ``BUSY`` replies (a script that ran past Redis's busy-reply threshold)."""

    def __init__(self, url: str, every: float = 0.001) -> None:
        super().__init__(daemon=True)
        self.conn = connect(url)
        self.every = every
        self.worst = 0.0
        self.busy = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            sent = time.perf_counter()
            try:
                self.conn.ping()
            except BusyLoadingError:
                self.busy += 1
            except ResponseError as error:
                if not str(error).startswith("BUSY"):
                    raise
                self.busy += 1
            self.worst = max(self.worst, time.perf_counter() - sent)
            time.sleep(self.every)

    def stop(self) -> float:
        """Stop; returns the worst round trip in ms."""
        self.stopped.set()
        self.join()
        return self.worst * 1000


class MapFigures(NamedTuple):
    steps_per_s: float
    worst_ping_ms: float
    slowest: tuple[float, str] | None  # the slowest command (ms, name), by SLOWLOG
    slow: tuple[tuple[float, str], ...]  # the 5 slowest, slowest first (a stall shows in all)
    busy: int  # BUSY replies the pinger had
    worker_rss_mb: float  # the largest worker's, sampled every 50 ms
    in_order: str  # the join's input: yes, no, or the run's status when it did not finish


class SlowLog:
    """Redis's SLOWLOG over a measurement: the slowest command it ran, the benchmark's own
    (FLUSHDB, SLOWLOG) left out, scripts named. None where CONFIG is not allowed (a managed
    Redis)."""

    def __init__(self, conn: Redis, names: dict[str, str], over_us: int = 1_000) -> None:
        self.conn = conn
        self.names = names
        self.kept: dict[str, str] | None = None
        try:
            self.kept = {
                **conn.config_get("slowlog-log-slower-than"),
                **conn.config_get("slowlog-max-len"),
            }
            conn.config_set("slowlog-log-slower-than", over_us)
            conn.config_set("slowlog-max-len", 100_000)
            conn.slowlog_reset()
        except ResponseError:
            self.kept = None

    def slowest(self, count: int = 5) -> list[tuple[float, str]] | None:
        """(milliseconds, the command's name) of the ``count`` slowest commands since it
        started, slowest first."""
        if self.kept is None:
            return None
        entries = self.conn.slowlog_get(100_000)
        for name, value in self.kept.items():
            self.conn.config_set(name, value)
        found = []
        for entry in entries:
            command = entry["command"]  # pickled arguments too
            if isinstance(command, bytes):
                command = command.decode(errors="replace")
            words = command.split()
            if words[0].upper() in ("FLUSHDB", "SLOWLOG"):
                continue
            name = self.names.get(words[1], "script") if words[0] == "EVALSHA" else words[0]
            found.append((entry["duration"] / 1000, name))
        return sorted(found, reverse=True)[:count] or [(0.0, "none over 1 ms")]


def script_names(context: Context) -> dict[str, str]:
    """ezgraph's scripts by their SHA1, as SLOWLOG shows them."""
    return {
        hashlib.sha1(source.encode()).hexdigest(): name
        for name, source in script_sources(context.tuning).items()
    }


def map_width(system: Ezgraph, n: int, workers: int) -> MapFigures:
    """One run mapping over ``n`` items, from submit to the run in SQL."""
    conn = system.conn
    flush_bench_db(conn)
    with tempfile.TemporaryDirectory(prefix="ezgraph-scale-") as folder:
        settings = system._settings("mapwide", sqlite_url(folder))
        context = Context(settings, conn)
        context.store.create_schema()
        orchestrator = GraphOrchestrator(context=context)
        procs = system._start_workers(settings, workers)
        try:
            slowlog = SlowLog(conn, script_names(context))
            pinger = Pinger(system.url)
            pinger.start()
            started = time.monotonic()
            run_id = orchestrator.submit("split", n=n)
            conn.rpush(GO_KEY, *["go"] * workers)
            rss = 0.0
            while context.store.count_runs() < 1:
                check_alive(procs)
                rss = max(rss, max_rss_mb(procs))
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            worst = pinger.stop()
            slowest = slowlog.slowest()
            stored = context.store.load_run(run_id, with_steps=False)
            result = stored.result if stored is not None else None
            in_order = "yes" if isinstance(result, dict) and result.get("in_order") else "no"
            if stored is None or stored.status != "finished":
                in_order = f"run {stored.status if stored else 'missing'}"
        finally:
            system._stop_workers(procs)
            flush_bench_db(conn)
            dispose_engines()
    top = tuple(slowest or ())
    return MapFigures(
        (n + 2) / elapsed, worst, top[0] if top else None, top, pinger.busy, rss, in_order
    )


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


def instance_bytes(
    system: Ezgraph, widths: Sequence[int] = (1_000, 10_000)
) -> list[tuple[int, float]]:
    """Redis bytes per queued instance of a map over its mapper's own input (whose state,
    which the instances read, holds every item): the mapper run alone, in this process."""
    conn = system.conn
    measured = []
    for n in widths:
        flush_bench_db(conn)
        with tempfile.TemporaryDirectory(prefix="ezgraph-scale-") as folder:
            context = Context(system._settings("mapwide", sqlite_url(folder)), conn)
            context.store.create_schema()
            _, empty = keys_bytes(conn)
            GraphOrchestrator(context=context).submit("split", items=list(range(n)))
            serve(context, ["split"], burst=True, log_level="WARNING", with_scheduler=False)
            _, staged = keys_bytes(conn)
            measured.append((n, (staged - empty) / n))
            flush_bench_db(conn)
            dispose_engines()
    return measured


def backlog(system: Ezgraph, sizes: Sequence[int] = (1_000, 100_000)) -> list[float]:
    """Steps/s draining ``sizes`` queued chain2 runs (all submitted before the workers go);
    of a drain shorter than 10 s, the median of 3 (1,000 runs take half a second)."""
    rates = []
    for runs in sizes:
        first = system.run("chain2", runs)
        more = [system.run("chain2", runs) for _ in range(2)] if first.seconds < 10 else []
        rates.append(statistics.median(m.steps_per_s for m in [first, *more]))
    return rates


def live_runs(
    system: Ezgraph, sizes: Sequence[int] = (1_000, 100_000), ended: int = 500
) -> list[tuple[float, float]]:
    """With ``sizes`` live runs waiting: milliseconds of one watchdog pass (median of 5), and
    of the hand-over of ``ended`` runs that ended meanwhile (canceled) to SQL."""
    conn = system.conn
    measured = []
    for runs in sizes:
        flush_bench_db(conn)
        with tempfile.TemporaryDirectory(prefix="ezgraph-scale-") as folder:
            context = Context(system._settings("chain2", sqlite_url(folder)), conn)
            context.store.create_schema()
            orchestrator = GraphOrchestrator(context=context)
            live = orchestrator.submit_many(
                "a", ({"graph": "chain2", "run": r} for r in range(runs + ended))
            )
            time.sleep(context.tuning.grace + 0.5)  # a pass looks at runs past the grace
            took = []
            for _ in range(5):
                began = time.perf_counter()
                recovery.watch_runs(context, lambda _run_id: None)
                took.append((time.perf_counter() - began) * 1000)
            for run_id in live[-ended:]:
                context.runs.cancel(run_id, "benchmark")
            began = time.perf_counter()
            written = RunWriter(context, "benchmark").write_unsaved()
            handover = (time.perf_counter() - began) * 1000
            assert written == ended, f"{written} runs written of {ended}"
            measured.append((sorted(took)[2], handover))
            flush_bench_db(conn)
            dispose_engines()
    return measured


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
            got = map_width(system, n, workers)
            rate = got.steps_per_s
            base = base or rate
            call = f"{got.slowest[0]:.1f} ({got.slowest[1]})" if got.slowest else "n/a"
            row = [f"{n:,}", f"{rate:.0f}", f"{rate / base:.2f}x", f"{got.worst_ping_ms:.1f}"]
            row += [call, str(got.busy), f"{got.worker_rss_mb:.0f}", got.in_order]
            rows.append(row)
            print(f"map {n}: {rate:.0f} steps/s, slowest call {call}", flush=True)
        widest = ", ".join(f"{ms:.1f} ({name})" for ms, name in got.slow)
        chain2 = system.run("chain2", 2_000, workers).steps_per_s
        lines.append("map width (split -> item x n -> gather), one run, 2 ezgraph workers")
        header = ["items", "steps/s", "vs narrowest", "worst PING ms", "slowest call ms"]
        header += ["BUSY", "worker RSS MiB", "in order"]
        lines.append(format_rows(header, rows))
        lines.append(f"the widest map's slowest commands, ms: {widest or 'n/a'}")
        lines.append(
            f"chain2 (2,000 runs) in the same run: {chain2:.0f} steps/s; the widest map"
            f" {rate / chain2:.2f}x chain2"
        )
        instances = instance_bytes(system)
        lines.append(
            "a map over its mapper's own input, Redis bytes per queued instance: "
            + ", ".join(f"{b:,.0f} at {n:,} items" for n, b in instances)
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
        (pass_few, hand_few), (pass_many, hand_many) = live_runs(system)
        lines.append(
            f"\nlive runs: a watchdog pass {pass_few:.1f} ms with 1,000 waiting, {pass_many:.1f}"
            f" ms with 100,000 ({pass_many / pass_few:.2f}x); the hand-over of 500 ended runs"
            f" to SQL {hand_few:.0f} ms and {hand_many:.0f} ms ({hand_many / hand_few:.2f}x)"
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
