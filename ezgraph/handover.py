"""The hand-over to SQL: ended runs go from Redis to the database, in batches, never lost.

A run that ends in Redis enters the unsaved set; :class:`RunWriter` writes the runs of that set
to SQL, many per transaction, one writer at a time (a short lock: writing a run twice is an
upsert, so the lock only spares duplicate work), and only then lets their keys expire, their RQ
jobs' keys too (``EZGRAPH_RUN_TTL`` later: Redis holds only the work in flight). A run
that cannot be written (the database is down) stays in the set and is written later.

Three drivers decide when to write, with one policy (:meth:`RunWriter.due`): ezgraph's worker
(its maintenance thread while it is busy, itself when idle), a stock RQ worker's process
(:mod:`ezgraph.workers.stock`), and ``ezgraph persist --follow`` (:func:`follow`), one process
writing every worker's runs; while it runs, stock workers leave the writing to it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from . import rq_compat
from .context import Context
from .errors import ConnectionFailed, StoreRefused
from .faults import crash_point
from .model.records import RunRecord
from .settings import Tuning
from .state.live import LiveRun, record_from_live

if TYPE_CHECKING:  # imported where first used: see start_notifier
    from .notify import Notifier

logger = logging.getLogger(__name__)


class RunWriter:
    """Writes ended runs to SQL for one process (``name`` holds the write lock)."""

    def __init__(self, context: Context, name: str) -> None:
        self.context = context
        self.name = name
        self.tuning = context.tuning
        self._ended = 0  # runs this process ended since it last wrote
        self._last_write = 0.0
        self._follower_seen = (-math.inf, False)  # (when looked, a follower writes)
        self._lock = threading.Lock()
        self._down_until = 0.0  # the database is down: not tried again before (monotonic)
        self._retry_in = 0.0
        self._refused = 0  # runs the last write set aside
        self._holding = False  # this writer holds the write lock (take_turn)
        self.on_written: Callable[[], None] | None = None  # wakes this process's notifier

    # -- writing -----------------------------------------------------------------------------

    def write_runs(self, run_ids: Sequence[str]) -> list[str]:
        """Write these ended runs in one transaction and mark them saved; returns the ids
        written. None while the database is down (they wait in Redis; it is tried again after
        a back-off). A run the database refuses is set aside with its reason
        (:meth:`RedisRuns.set_aside_run`) and the others are written without it."""
        self._refused = 0
        if self.database_down:
            return []
        context = self.context
        runs = context.runs
        wide = runs.wide_runs(run_ids)
        narrow = [run_id for run_id in run_ids if run_id not in wide]
        lives = [*zip(narrow, runs.read_many(narrow, events=True), strict=True)]
        lives += [(run_id, runs.read_wide(run_id)) for run_id in wide]
        records = []
        written = []  # run id, the end written (a retry may change it while this writes)
        gone = []
        for run_id, live in lives:
            if live is None:
                gone.append((run_id, ""))  # expired from Redis: nothing left to write
            elif ended := live.header.get("ended_at"):
                records.append(record_from_live(live, encoded=True))  # a wide run's: no steps
                written.append((run_id, ended))
        ttl = context.settings.run_ttl
        if gone and runs.mark_saved(gone, ttl):
            runs.expire_saved(ttl)
        if not records:
            return []
        crash_point(context.connection, context.keys, "before_persist", "run")
        notify = context.settings.notify_url is not None
        try:
            apart = self._save_steps_apart([(r, live) for r, live in lives if r in wide and live])
            records = [r for r in records if r.run_id not in wide or r.run_id in apart]
            saved = self._save(records, notify, apart)
        except ConnectionFailed as error:
            self._database_down(error)
            return []
        self._database_up()
        if context.runs.mark_saved([pair for pair in written if pair[0] in saved], ttl):
            context.runs.expire_saved(ttl)  # a big run's jobs, a chunk per call
        if notify and saved and self.on_written is not None:
            self.on_written()
        return [record.run_id for record in records if record.run_id in saved]

    def _save_steps_apart(self, wide: Sequence[tuple[str, LiveRun]]) -> dict[str, int]:
        """Write the steps of wide runs (a big map's) a chunk per transaction, never the whole
        map in memory; returns how many each has (those the database refused are set aside).
        The write lock is renewed per chunk: another writer would only write them again."""
        store, chunk = self.context.store, self.tuning.write_steps_chunk
        apart = {}
        for run_id, live in wide:
            count = 0
            try:
                for steps in self.context.runs.wide_steps(live, chunk):
                    store.save_steps(run_id, count, steps)
                    count += len(steps)
                    self._renew_lock()
            except StoreRefused as error:
                self._set_aside(run_id, error)
                continue
            apart[run_id] = count
        return apart

    def _save(
        self, records: Sequence[RunRecord], notify: bool, apart: dict[str, int] | None = None
    ) -> set[str]:
        """Save ``records`` (with their notifications, in the same transaction: none is lost);
        when the database refuses the batch, halves of it, down to the runs it refuses, which
        are set aside. Returns the ids saved."""
        context = self.context
        try:
            pending = context.notifications.pending_for(records) if notify else None
            context.store.save_runs(records, pending, steps_apart=apart)
            return {record.run_id for record in records}
        except StoreRefused as error:
            if len(records) == 1:
                self._set_aside(records[0].run_id, error)
                return set()
            middle = len(records) // 2
            return self._save(records[:middle], notify, apart) | self._save(
                records[middle:], notify, apart
            )

    def _set_aside(self, run_id: str, error: StoreRefused) -> None:
        logger.error("run %s set aside: the database refused it: %s", run_id, error)
        self.context.runs.set_aside_run(run_id, str(error))
        self._refused += 1

    def _renew_lock(self) -> bool:
        """Keep the write lock while a long write goes on (a steady stream of ended runs, a
        wide run), if this writer holds it; False when it lost it (then another writes: two
        would write the same oldest runs). A writer without the lock (a final write) goes on."""
        if not self._holding:
            return True
        connection, lock = self.context.connection, self.context.keys.write_lock
        if connection.get(lock) != self.name.encode():
            return False
        connection.pexpire(lock, self.tuning.write_lock_ms)
        return True

    def _database_down(self, error: ConnectionFailed) -> None:
        """The database failed: wait before trying again, longer each time it stays down."""
        tuning = self.tuning
        if self._down_until == 0.0:
            logger.warning("database down, ended runs wait in Redis: %s", error)
        self._retry_in = min(self._retry_in * 2, tuning.sql_retry_max) or tuning.sql_retry
        self._down_until = time.monotonic() + self._retry_in
        with contextlib.suppress(RedisError):  # for writers that just started (a work-horse)
            self.context.connection.set(
                self.context.keys.database_down, "1", px=int(self._retry_in * 1000)
            )

    def _database_up(self) -> None:
        if self._down_until:
            logger.warning("database back: writing the runs that waited")
        self._down_until, self._retry_in = 0.0, 0.0

    @property
    def database_down(self) -> bool:
        """Whether the database was found down and is not yet due to be tried again."""
        return time.monotonic() < self._down_until

    def write_unsaved(
        self, older_than: float = 0.0, batch: int | None = None, until_empty: bool = True
    ) -> int:
        """Write the ended runs waiting in Redis (for over ``older_than`` seconds), ``batch``
        per transaction; returns how many were written. ``until_empty``: also the runs that
        end meanwhile; else only those waiting when called (they are then chased no further)."""
        runs = self.context.runs
        batch = batch or self.tuning.write_batch
        total = 0
        left = math.inf if until_empty else runs.unsaved_count()
        while left > 0:
            ids = runs.unsaved(limit=int(min(batch, left)), older_than=older_than)
            if not ids:
                return total
            written = self.write_runs(ids)
            total += len(written)
            if len(written) + self._refused < len(ids) or not self._renew_lock():
                return total
            left -= len(ids)
        return total

    def take_turn(
        self, final: bool = False, older_than: float = 0.0, until_empty: bool = True
    ) -> bool:
        """Write every waiting run under the write lock; False when another process holds it.
        A stopping process (``final``) writes without it."""
        connection, lock = self.context.connection, self.context.keys.write_lock
        if not final and not connection.set(lock, self.name, nx=True, px=self.tuning.write_lock_ms):
            return False
        self._holding = not final
        try:
            self.write_unsaved(older_than=older_than, until_empty=until_empty)
        except RedisError:
            raise
        except Exception:
            logger.exception("writing ended runs to SQL failed; they wait in Redis")
        finally:
            # Released if still this writer's (it may have expired and another taken it).
            if self._holding and connection.get(lock) == self.name.encode():
                connection.delete(lock)
            self._holding = False
        return True

    # -- when to write -----------------------------------------------------------------------

    def write_now(self, run_id: str) -> None:
        """Write run ``run_id`` at once (a process about to end), unless a writer found the
        database down a moment ago: it then waits in Redis for the others' next write."""
        if not self.context.connection.exists(self.context.keys.database_down):
            self.write_runs([run_id])

    def ended(self, run_id: str) -> None:
        """This process ended run ``run_id``: it is written in the next batch."""
        with self._lock:
            self._ended += 1

    @property
    def waiting(self) -> int:
        """Runs this process ended since it last wrote."""
        return self._ended

    def due(self, busy: bool) -> bool:
        """Whether to write now: while busy every ``write_every`` seconds or ``write_batch``
        runs, many per transaction; when idle at once (at most every ``idle_write_gap``)."""
        return write_due(self._ended, time.monotonic() - self._last_write, busy, self.tuning)

    def wrote(self) -> None:
        """The runs ended so far were written (or handed to a writer)."""
        with self._lock:
            self._ended = 0
            self._last_write = time.monotonic()

    # -- persist --follow ----------------------------------------------------------------------

    def follower_writes(self) -> bool:
        """Whether an ``ezgraph persist --follow`` writes ended runs (looked up at most once
        every ``follower_look_every`` seconds)."""
        looked, present = self._follower_seen
        if time.monotonic() - looked >= self.tuning.follower_look_every:
            present = bool(self.context.connection.exists(self.context.keys.follower))
            self._follower_seen = (time.monotonic(), present)
        return present


def forget_ended_jobs(context: Context, queues: Sequence[str] | None = None) -> None:
    """Drop from RQ's registries of ``queues`` (default: every queue) the ended jobs whose
    time has passed, as RQ's own cleanup does (a stock worker's, every 10 minutes), and set
    the jobs of saved runs to expire where a writer that died left them: once a second."""
    rq_compat.prune_registries(
        context.connection, rq_compat.queue_names(context.connection) if queues is None else queues
    )
    context.runs.expire_saved(context.settings.run_ttl)


def write_due(waiting: int, waited: float, busy: bool, tuning: Tuning) -> bool:
    """The one batching policy: ``waiting`` runs, ``waited`` seconds since the last write."""
    if not waiting:
        return False
    if busy:
        return waiting >= tuning.write_batch or waited >= tuning.write_every
    return waited >= tuning.idle_write_gap


def follow(context: Context, stopped: threading.Event, name: str) -> None:
    """``persist --follow``: write every ended run as runs end, in batches, until ``stopped``.

    It announces itself (so stock workers leave the writing to it) and writes when the
    unsaved set is quiet, holds a batch, or has waited ``write_every``. On a clean stop it
    withdraws, waits out the workers' last look, and writes what is left.
    """
    tuning = context.tuning
    writer = RunWriter(context, name)
    notifier = start_notifier(context, writer)  # it POSTs the runs too, when asked to
    connection, key = context.connection, context.keys.follower
    announced = -math.inf
    waiting_since: float | None = None  # when runs were first seen waiting
    seen = 0  # runs waiting at the last look
    try:
        while not stopped.is_set():
            try:
                now = time.monotonic()
                if now - announced >= tuning.follower_renew_every:
                    connection.set(key, name, px=int(tuning.follower_ttl * 1000))
                    announced = now
                    forget_ended_jobs(context)
                waiting = context.runs.unsaved_count()
                waiting_since = (waiting_since or now) if waiting else None
                busy = waiting != seen  # runs ended since the last look
                if write_due(waiting, now - (waiting_since or now), busy, tuning):
                    oldest = context.runs.unsaved(limit=1)
                    writer.take_turn(until_empty=False)
                    waiting_since = None
                    if context.runs.unsaved(limit=1) == oldest:
                        # Nothing was written: the database is down (logged), or another
                        # process is writing. Look again later.
                        stopped.wait(tuning.follower_retry)
                seen = waiting
            except (RedisError, OSError) as error:
                logger.warning("persist --follow: Redis failed, trying again: %s", error)
                stopped.wait(tuning.follower_retry)
            stopped.wait(tuning.follower_tick)
    finally:
        if connection.get(key) == name.encode():
            connection.delete(key)
        time.sleep(tuning.follower_look_every)  # workers that just looked leave runs to us
        writer.take_turn(final=True)
        if notifier is not None:
            notifier.stop()


def start_notifier(context: Context, writer: RunWriter | None = None) -> Notifier | None:
    """Start this process's notifier, woken when ``writer`` writes runs, when
    ``FLOW_ORCHESTRATION_URL`` is set; else None."""
    if context.settings.notify_url is None:
        return None
    # Imported here: every step's process imports this module, and only those that POST
    # runs need urllib3 (a stock worker's forked work-horse imports ezgraph for each job).
    from .notify import Notifier

    notifier = Notifier(context, context.settings.notify_url)
    notifier.start()
    if writer is not None:
        writer.on_written = notifier.wake
    return notifier
