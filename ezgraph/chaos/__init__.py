"""``ezgraph chaos``: a crash audit anyone can run.

It starts ezgraph worker processes on the chaos graph (or the configured graph, with
``--graph``), submits runs, SIGKILLs a busy worker every few seconds and starts a replacement,
then reports: runs, kills, lost runs, duplicated SQL rows, duplicate side effects, and the time
from each kill until the step the dead worker held ran again.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import rq_compat
from ..client import GraphOrchestrator
from ..connection import redis_url
from ..context import Context
from ..handover import RunWriter
from ..model.records import RunStatus
from ..state.protocol import as_text

CHAOS_GRAPH = "ezgraph.chaos.graph"


@dataclass
class ChaosReport:
    """What the audit saw."""

    runs: int
    kills: int = 0
    finished: int = 0
    failed: int = 0
    lost: int = 0
    sql_runs: int = 0
    duplicated_sql_rows: int = 0
    executions: int = 0
    steps: int = 0
    side_effects: int = 0
    duplicate_side_effects: int = 0
    missing_side_effects: int = 0
    recoveries: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def percentile(self, q: float) -> float | None:
        """The q-th percentile of recovery times, in seconds (None without recoveries)."""
        if not self.recoveries:
            return None
        ordered = sorted(self.recoveries)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    def lines(self) -> list[str]:
        """The report, one fact per line."""
        p50, p99 = self.percentile(50), self.percentile(99)
        recovery = (
            f"{p50:.2f} s p50 / {p99:.2f} s p99 over {len(self.recoveries)} recoveries"
            if p50 is not None and p99 is not None
            else "no step was held by a killed worker"
        )
        return [
            f"runs:                   {self.runs} ({self.finished} finished, {self.failed} failed)",
            f"workers killed:         {self.kills}",
            f"lost runs:              {self.lost}",
            f"runs in SQL:            {self.sql_runs}",
            f"duplicated SQL rows:    {self.duplicated_sql_rows}",
            f"step executions:        {self.executions} for {self.steps} steps",
            f"side effects:           {self.side_effects}",
            f"duplicate side effects: {self.duplicate_side_effects}",
            f"missing side effects:   {self.missing_side_effects}",
            f"kill to re-run:         {recovery}",
            f"took:                   {self.seconds:.1f} s",
        ]

    @property
    def clean(self) -> bool:
        """Nothing lost, nothing duplicated."""
        return not (
            self.lost
            or self.duplicated_sql_rows
            or self.duplicate_side_effects
            or self.missing_side_effects
            or self.failed
        )


class Chaos:
    """Runs the audit against the Redis and database of ``context``."""

    def __init__(
        self,
        context: Context,
        workers: int = 2,
        every: float = 5.0,
        jitter: float = 2.0,
        work_ms: float = 20.0,
        timeout: float = 600.0,
        log: Callable[[str], None] = print,
    ) -> None:
        self.context = context
        self.workers = workers
        self.every = every
        self.jitter = jitter
        self.work_ms = work_ms
        self.timeout = timeout
        self.log = log
        self.ledger = context.keys.chaos_ledger(f"{os.getpid()}:{int(time.time())}")

    def run(self, runs: int) -> ChaosReport:
        """Submit ``runs``, kill workers until they all ended (or the timeout), report."""
        orchestrator = GraphOrchestrator(context=self.context)
        connection = self.context.connection
        report = ChaosReport(runs=runs)
        started = time.monotonic()
        procs = [self._spawn() for _ in range(self.workers)]
        pending_recoveries: list[tuple[float, str, list[str]]] = []
        try:
            run_ids = [
                orchestrator.submit("start", ledger_prefix=self.ledger, work_ms=self.work_ms)
                for _ in range(runs)
            ]
            next_kill = time.monotonic() + self._interval()
            remaining = set(run_ids)
            deadline = time.monotonic() + self.timeout
            while remaining and time.monotonic() < deadline:
                time.sleep(0.05)
                self._measure(pending_recoveries, report)
                if time.monotonic() >= next_kill:
                    killed = self._kill_busy(procs)
                    if killed is not None:
                        self.log(f"killed worker {killed[0]} holding {len(killed[1])} step(s)")
                        report.kills += 1
                        pending_recoveries.append((time.monotonic(), *killed))
                        procs.append(self._spawn())
                    next_kill = time.monotonic() + self._interval()
                remaining = self._still_live(remaining)
            # Let the last recoveries be measured.
            while pending_recoveries and time.monotonic() < deadline:
                time.sleep(0.05)
                self._measure(pending_recoveries, report)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        # Runs end in Redis first; write what the workers' hand-over to SQL left.
        RunWriter(self.context, f"chaos-{os.getpid()}").write_unsaved()
        report.seconds = time.monotonic() - started
        self._tally(run_ids, orchestrator, report)
        connection.delete(f"{self.ledger}:executions", f"{self.ledger}:effects")
        for key in connection.scan_iter(f"{self.ledger}:done:*", count=1000):
            connection.delete(key)
        return report

    def _interval(self) -> float:
        return max(0.5, self.every + random.uniform(-self.jitter, self.jitter))

    def _spawn(self) -> subprocess.Popen[bytes]:
        settings = self.context.settings
        env = dict(os.environ)
        env.update(
            REDIS_URL=redis_url(settings),  # as configured: user, password and TLS kept
            DATABASE_URL=settings.database_url,
            EZGRAPH_MODULES=self.context.graph().package,
            EZGRAPH_KEY_PREFIX=settings.key_prefix,
        )
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path.cwd()), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        return subprocess.Popen(
            [sys.executable, "-m", "ezgraph", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _kill_busy(self, procs: list[subprocess.Popen[bytes]]) -> tuple[str, list[str]] | None:
        """SIGKILL a live worker holding a step; returns its name and the job ids it held."""
        connection = self.context.connection
        keys = self.context.keys
        by_pid: dict[int, str] = {}
        for raw in connection.smembers(keys.workers):
            name = as_text(raw) or ""
            pid = connection.get(keys.alive(name))
            if pid is not None:
                by_pid[int(pid)] = name
        alive = [p for p in procs if p.poll() is None and p.pid in by_pid]
        random.shuffle(alive)
        for proc in alive:
            name = by_pid[proc.pid]
            held = [as_text(i) or "" for i in connection.lrange(keys.claimed(name), 0, -1)]
            if held:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return name, held
        return None

    def _measure(self, pending: list[tuple[float, str, list[str]]], report: ChaosReport) -> None:
        """A kill is recovered when every job the dead worker held was taken up again by
        another worker (or ended)."""
        connection = self.context.connection
        for item in list(pending):
            killed_at, dead, held = item
            back = True
            for job_id in held:
                status, worker = (
                    as_text(v)
                    for v in connection.hmget(rq_compat.job_key(job_id), "status", "worker_name")
                )
                if status == "queued" or (status == "started" and worker == dead):
                    back = False
            if back:
                report.recoveries.append(time.monotonic() - killed_at)
                pending.remove(item)

    def _still_live(self, run_ids: set[str]) -> set[str]:
        connection = self.context.connection
        pipe = connection.pipeline(transaction=False)
        ordered = list(run_ids)
        for run_id in ordered:
            pipe.hget(self.context.keys.run(run_id), "ended_at")
        return {r for r, ended in zip(ordered, pipe.execute(), strict=True) if not ended}

    def _tally(
        self, run_ids: list[str], orchestrator: GraphOrchestrator, report: ChaosReport
    ) -> None:
        """Count outcomes from the database (where every run must be) and the ledger."""
        for status, (rows, distinct) in self.context.store.count_by_status(run_ids).items():
            report.sql_runs += distinct
            report.duplicated_sql_rows += rows - distinct
            if status == RunStatus.FINISHED:
                report.finished += distinct
            elif status == RunStatus.FAILED:
                report.failed += distinct
        # A run that never reached the database, finished or not, is lost.
        report.lost = len(run_ids) - report.sql_runs
        connection = self.context.connection
        executions = connection.hgetall(f"{self.ledger}:executions")
        report.executions = sum(int(v) for v in executions.values())
        report.steps = len(run_ids) * len(self.context.graph().nodes)
        effects = [as_text(e) for e in connection.lrange(f"{self.ledger}:effects", 0, -1)]
        report.side_effects = len(effects)
        report.duplicate_side_effects = len(effects) - len(set(effects))
        report.missing_side_effects = report.steps - len(set(effects))
