"""The nemeses of ``ezgraph chaos``: each strikes once when called, and says when the work it
struck at moved again.

Recovery is timed from the strike for a worker struck (``kill``, ``pause``: until every step
the worker held was taken up by another worker, or ended), and from the end of the fault for a
server struck (``stall-redis``, ``restart-redis``: until every step any worker held then has
ended; ``hang-db``: until every run that ended before the database answered again is in SQL).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import sqlalchemy

from .. import rq_compat
from ..context import Context
from ..embedded import PrivateServer
from .workers import Workers

ENDED = {"finished", "failed", "canceled", "stopped"}  # RQ statuses of a job that is over


@dataclass
class Arena:
    """What the nemeses strike at: the audit's workers, its Redis and its database."""

    context: Context
    workers: Workers
    server: PrivateServer | None  # the audit's own Redis server, when a nemesis needs one


@dataclass
class Strike:
    """One fault: what it held, when recovery is timed from, and (for a fault that lasts
    while the audit watches) when and how it ends."""

    since: float  # time.monotonic()
    held: list[str]  # job ids, or run ids for hang-db
    worker: str | None = None  # the worker struck
    struck: str = "Redis"  # what was struck, when not a worker
    what: str = "step(s)"  # what ``held`` holds
    heal_at: float | None = None
    heal: Callable[[], None] | None = None

    def describe(self) -> str:
        struck = f"worker {self.worker}" if self.worker else self.struck
        return f"{struck}, holding {len(self.held)} {self.what}"


class Nemesis:
    """One kind of fault; ``hold`` is how long it lasts (if it lasts)."""

    name: ClassVar[str]
    hold_default: ClassVar[float] = 0.0
    needs_private_redis: ClassVar[bool] = False

    def __init__(self, hold: float | None = None) -> None:
        self.hold = self.hold_default if hold is None else hold

    def refusal(self, database_url: str) -> str | None:
        """Why this nemesis cannot strike at this setup (None: it can)."""
        return None

    def strike(self, arena: Arena) -> Strike | None:
        """Strike once; None when there is nothing to strike at now (no worker busy)."""
        raise NotImplementedError

    def recovered(self, arena: Arena, strike: Strike) -> bool:
        """Whether the work ``strike`` held moved again."""
        raise NotImplementedError


class Kill(Nemesis):
    """SIGKILL a busy worker and start a replacement."""

    name = "kill"

    def strike(self, arena: Arena) -> Strike | None:
        busy = arena.workers.busy()
        if busy is None:
            return None
        name, proc, held = busy
        arena.workers.kill(proc)
        return Strike(time.monotonic(), held, worker=name)

    def recovered(self, arena: Arena, strike: Strike) -> bool:
        # Taken up by another worker (started elsewhere) or over; not while it waits queued.
        for job in rq_compat.job_details(arena.context.connection, strike.held):
            status, worker = job.get("status"), job.get("worker_name")
            if status == "queued" or (status == "started" and worker == strike.worker):
                return False
        return True


class Pause(Kill):
    """SIGSTOP a busy worker for ``hold`` seconds (past its heartbeat: its steps are taken
    over), then SIGCONT it: it must give up what it no longer holds."""

    name = "pause"
    hold_default = 15.0

    def strike(self, arena: Arena) -> Strike | None:
        busy = arena.workers.busy()
        if busy is None:
            return None
        name, proc, held = busy
        proc.send_signal(signal.SIGSTOP)
        now = time.monotonic()
        return Strike(
            now,
            held,
            worker=name,
            heal_at=now + self.hold,
            heal=lambda: proc.send_signal(signal.SIGCONT),
        )


class StallRedis(Nemesis):
    """SIGSTOP the audit's Redis server for ``hold`` seconds (past the clients' 5 s socket
    timeout: calls are sent again), then SIGCONT it."""

    name = "stall-redis"
    hold_default = 8.0
    needs_private_redis = True

    def strike(self, arena: Arena) -> Strike | None:
        assert arena.server is not None
        held = arena.workers.all_held()
        arena.server.signal(signal.SIGSTOP)
        try:
            time.sleep(self.hold)  # nothing here talks to Redis meanwhile
        finally:
            arena.server.signal(signal.SIGCONT)
        return Strike(time.monotonic(), held)

    def recovered(self, arena: Arena, strike: Strike) -> bool:
        details = rq_compat.job_details(arena.context.connection, strike.held)
        return all(job.get("status") in ENDED or not job for job in details)


class RestartRedis(StallRedis):
    """SIGKILL the audit's Redis server, and start it again on its append-only file after
    ``hold`` seconds."""

    name = "restart-redis"
    hold_default = 3.0

    def strike(self, arena: Arena) -> Strike | None:
        assert arena.server is not None
        held = arena.workers.all_held()
        arena.server.crash()
        time.sleep(self.hold)
        arena.server.start()
        return Strike(time.monotonic(), held)


class HangDb(Nemesis):
    """Lock ezgraph's tables (SQLite: the whole file) for ``hold`` seconds: every write to
    them waits, as on a database that accepts connections and does not answer."""

    name = "hang-db"
    hold_default = 8.0

    def refusal(self, database_url: str) -> str | None:
        if database_url.startswith(("sqlite", "postgresql")):
            return None
        return "hang-db locks SQLite and PostgreSQL databases only"

    def strike(self, arena: Arena) -> Strike | None:
        context = arena.context
        with locked(context.settings.database_url):
            time.sleep(self.hold)
        unsaved = context.runs.unsaved(limit=1_000_000)
        return Strike(time.monotonic(), unsaved, struck="database", what="ended run(s) to write")

    def recovered(self, arena: Arena, strike: Strike) -> bool:
        connection = arena.context.connection
        pipe = connection.pipeline(transaction=False)
        for run_id in strike.held:
            pipe.zscore(arena.context.keys.unsaved_runs, run_id)
        return not any(score is not None for score in pipe.execute())


@contextmanager
def locked(url: str) -> Iterator[None]:
    """Hold a lock on ezgraph's tables in the database at ``url`` while the block runs."""
    engine = sqlalchemy.create_engine(url)
    try:
        if engine.dialect.name == "sqlite":
            raw = engine.raw_connection()
            try:
                driver = raw.driver_connection
                assert driver is not None
                driver.isolation_level = None  # the statements below as written
                driver.execute("PRAGMA busy_timeout=30000")  # a write in progress ends first
                driver.execute("BEGIN EXCLUSIVE")
                try:
                    yield
                finally:
                    driver.execute("ROLLBACK")
            finally:
                raw.close()
        else:
            with engine.begin() as connection:
                connection.execute(
                    sqlalchemy.text(
                        "LOCK TABLE ezgraph_runs, ezgraph_steps IN ACCESS EXCLUSIVE MODE"
                    )
                )
                yield
    finally:
        engine.dispose()


NEMESES: dict[str, type[Nemesis]] = {
    nemesis.name: nemesis for nemesis in (Kill, Pause, StallRedis, RestartRedis, HangDb)
}
