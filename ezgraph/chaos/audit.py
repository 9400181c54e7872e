"""The audit: for each nemesis in turn, submit its share of the runs and strike while they
flow; then count, from SQL and the steps' ledger, what was lost, stuck, failed or doubled."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..client import GraphOrchestrator
from ..context import Context
from ..embedded import PrivateServer
from ..handover import RunWriter
from ..model.records import RunStatus
from ..settings import Settings
from ..state.protocol import as_text
from .nemeses import Arena, Nemesis, Strike
from .report import ChaosReport, Tally
from .workers import Workers

CHAOS_GRAPH = "ezgraph.chaos.graph"


@dataclass
class Phase:
    """The runs one nemesis struck at, where their steps wrote, and the tally so far."""

    nemesis: Nemesis
    run_ids: list[str]
    ledger: str
    tally: Tally


class Chaos:
    """Runs the audit on the Redis and database of ``settings`` (on a Redis server of its own
    when a nemesis strikes at Redis)."""

    def __init__(
        self,
        settings: Settings,
        nemeses: Sequence[Nemesis],
        workers: int = 2,
        every: float = 5.0,
        jitter: float = 2.0,
        work_ms: float = 20.0,
        timeout: float = 600.0,
        faults: int | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.settings = settings
        self.nemeses = list(nemeses)
        self.workers = workers
        self.every = every
        self.jitter = jitter
        self.work_ms = work_ms
        self.timeout = timeout
        self.faults = faults  # at most this many per nemesis (None: as long as runs flow)
        self.log = log

    def run(self, runs: int) -> ChaosReport:
        """Split ``runs`` among the nemeses; strike with each in turn while its runs flow,
        until they all ended (or the timeout); report."""
        started = time.monotonic()
        deadline = started + self.timeout
        with self._folder() as folder, self._redis(folder) as (settings, server):
            context = Context(settings)
            context.store.create_schema()  # the tables hang-db locks
            workers = Workers(context, self.workers, folder / "workers", self.log)
            arena = Arena(context, workers, server)
            phases: list[Phase] = []
            try:
                for index, nemesis in enumerate(self.nemeses):
                    share = runs // len(self.nemeses) + (index < runs % len(self.nemeses))
                    now = time.monotonic()
                    until = now + (deadline - now) / (len(self.nemeses) - index)
                    phases.append(self._phase(arena, nemesis, share, until))
            finally:
                workers.stop()
            # Runs end in Redis first; write what the workers' hand-over to SQL left.
            RunWriter(context, f"chaos-{os.getpid()}").write_unsaved()
            report = ChaosReport([self._tally(context, p) for p in phases], workers.exits)
        report.seconds = time.monotonic() - started
        return report

    @contextmanager
    def _folder(self) -> Iterator[Path]:
        """A folder of the audit's own (its workers' stderr, its private server), removed
        after."""
        folder = Path(tempfile.mkdtemp(prefix="ezgraph-chaos-"))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @contextmanager
    def _redis(self, folder: Path) -> Iterator[tuple[Settings, PrivateServer | None]]:
        """The settings to audit with: as given, or on a private server for the nemeses
        that strike at Redis (never the user's Redis)."""
        if not any(n.needs_private_redis for n in self.nemeses):
            yield self.settings, None
            return
        server = PrivateServer(folder / "redis")
        try:
            server.start()
            self.log(f"Redis: a private valkey-server (append-only, fsync always) in {folder}")
            yield self.settings.replace(redis_url=server.url), server
        finally:
            server.stop()

    def _phase(self, arena: Arena, nemesis: Nemesis, runs: int, until: float) -> Phase:
        context = arena.context
        ledger = context.keys.chaos_ledger(f"{os.getpid()}:{int(time.time())}:{nemesis.name}")
        orchestrator = GraphOrchestrator(context=context)
        run_ids = [
            orchestrator.submit("start", ledger_prefix=ledger, work_ms=self.work_ms)
            for _ in range(runs)
        ]
        phase = Phase(nemesis, run_ids, ledger, Tally(nemesis.name, runs=runs))
        remaining = set(run_ids)
        lasting: Strike | None = None  # a fault still on
        pending: list[Strike] = []  # faults whose work has not moved again yet
        next_fault = time.monotonic() + self._interval()
        try:
            while time.monotonic() < until and (remaining or pending or lasting):
                time.sleep(0.1)
                now = time.monotonic()
                if (
                    lasting is not None
                    and lasting.heal is not None
                    and now >= (lasting.heal_at or now)
                ):
                    lasting.heal()
                    lasting = None
                # One fault at a time: the next comes once the last one's work moved again.
                if (
                    not (lasting or pending)
                    and remaining
                    and now >= next_fault
                    and (self.faults is None or phase.tally.faults < self.faults)
                ):
                    strike = nemesis.strike(arena)
                    if strike is None:  # no worker busy: look again soon
                        next_fault = now + 0.2
                    else:
                        phase.tally.faults += 1
                        self.log(f"{nemesis.name}: {strike.describe()}")
                        pending.append(strike)
                        lasting = strike if strike.heal is not None else None
                for strike in list(pending):
                    if nemesis.recovered(arena, strike):
                        phase.tally.recoveries.append(time.monotonic() - strike.since)
                        pending.remove(strike)
                        next_fault = time.monotonic() + self._interval()
                arena.workers.replace_exited()
                remaining = self._still_live(context, remaining)
        finally:
            if lasting is not None and lasting.heal is not None:
                lasting.heal()
        return phase

    def _interval(self) -> float:
        return max(0.5, self.every + random.uniform(-self.jitter, self.jitter))

    @staticmethod
    def _still_live(context: Context, run_ids: set[str]) -> set[str]:
        pipe = context.connection.pipeline(transaction=False)
        ordered = list(run_ids)
        for run_id in ordered:
            pipe.hmget(context.keys.run(run_id), "status", "ended_at")
        # A run Redis no longer holds ended and left (its keys expire after SQL has it).
        replies = pipe.execute()
        return {
            r for r, (status, ended) in zip(ordered, replies, strict=True) if status and not ended
        }

    def _tally(self, context: Context, phase: Phase) -> Tally:
        """Count a phase's outcomes from the database (where every run must be) and the
        ledger; then drop the ledger."""
        tally = phase.tally
        for status, (rows, distinct) in context.store.count_by_status(phase.run_ids).items():
            tally.sql_runs += distinct
            tally.duplicated_sql_rows += rows - distinct
            if status == RunStatus.FINISHED:
                tally.finished += distinct
            elif status == RunStatus.FAILED:
                tally.failed += distinct
        tally.stuck = len(self._still_live(context, set(phase.run_ids)))
        # A run that ended (or left Redis) and never reached the database is lost.
        tally.lost = max(0, len(phase.run_ids) - tally.sql_runs - tally.stuck)
        connection, ledger = context.connection, phase.ledger
        tally.executions = int(connection.hlen(f"{ledger}:executions"))
        tally.steps = len(phase.run_ids) * len(context.graph().nodes)
        effects = [as_text(e) for e in connection.lrange(f"{ledger}:effects", 0, -1)]
        tally.side_effects = len(effects)
        tally.duplicate_side_effects = len(effects) - len(set(effects))
        tally.missing_side_effects = tally.steps - len(set(effects))
        connection.delete(f"{ledger}:executions", f"{ledger}:effects")
        for key in connection.scan_iter(f"{ledger}:done:*", count=1000):
            connection.delete(key)
        return tally
