"""An ezgraph worker's background threads: recovery, due retries, schedules and the hand-over
to SQL.

The maintenance thread, once a second: give back dead workers' claims and make the watchdog's
pass (:mod:`ezgraph.recovery`, the pass one worker at a time, which also fires the due
schedules: :mod:`ezgraph.schedules`), move retries whose delay has passed to their queues
(RQ's scheduler's job), and drop the ended jobs whose time has passed from RQ's registries.
Its writer thread does every SQL write of the worker: the runs its worker ended, when the
worker asks (:meth:`Maintenance.write_soon`), and once a second the ended runs nobody wrote
(their worker died, or the database was down). So a database that hangs delays neither steps
nor recovery: it only keeps runs waiting in Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from .. import handover, recovery
from ..schedules import Schedules

if TYPE_CHECKING:  # the worker owns its maintenance thread: a type only
    from .fast import FastWorker

logger = logging.getLogger(__name__)


class Maintenance(threading.Thread):
    """The background duties of one ezgraph worker (see the module doc)."""

    def __init__(
        self, worker: FastWorker, with_scheduler: bool = True, fire_schedules: bool = False
    ) -> None:
        super().__init__(name=f"ezgraph-maintenance-{worker.name}", daemon=True)
        self.worker = worker
        self.context = worker.context
        self.with_scheduler = with_scheduler
        self.schedules = Schedules(worker.context) if fire_schedules else None
        self.stopped = threading.Event()
        self._wake = threading.Event()
        self._write = False  # the worker asked for a write of ended runs
        self._writer = threading.Thread(
            target=self._write_loop, name=f"ezgraph-writer-{worker.name}", daemon=True
        )

    def start(self) -> None:
        """Start the maintenance thread and its writer thread."""
        super().start()
        self._writer.start()

    def write_soon(self) -> None:
        """Write the ended runs to SQL in the writer thread, now."""
        self._write = True
        self._wake.set()

    def run(self) -> None:
        """Loop until :meth:`stop`, one pass a second; a failing pass is logged, never fatal."""
        while not self.stopped.wait(1.0):
            try:
                self.maintain()
            except RedisError as error:
                logger.warning("worker maintenance: Redis failed, trying again: %s", error)
            except Exception:
                logger.exception("worker maintenance failed")

    def maintain(self) -> None:
        """One pass of the duties done once a second."""
        context, writer = self.context, self.worker.writer
        recovery.recover_dead_workers(context, writer.ended)
        # Not released: it lets one pass a second through, whichever worker makes it.
        if context.connection.set(context.keys.watch_lock, self.worker.name, nx=True, px=900):
            recovery.fail_past_deadline(context, writer.ended)
            recovery.watch_runs(context, writer.ended)
            if self.schedules is not None:
                self.schedules.fire_due()
            recovery.resume_maps(context, writer.ended)
        if self.with_scheduler:
            self.enqueue_due_retries()
        handover.forget_ended_jobs(context, [q.name for q in self.worker.queues])

    def _write_loop(self) -> None:
        """The writer thread: the writes the worker asks for (asked again shortly while another
        process holds the write lock) and, once a second, the runs a dead worker left or that
        ended while the database was down."""
        tuning = self.context.tuning
        last_sweep = time.monotonic()
        while not self.stopped.is_set():
            next_sweep = last_sweep + 1.0 - time.monotonic()
            self._wake.wait(
                min(tuning.write_retry, next_sweep) if self._write else max(0.0, next_sweep)
            )
            self._wake.clear()
            if self.stopped.is_set():
                break
            try:
                if self._write:
                    self._write_ended()
                if time.monotonic() - last_sweep >= 1.0:
                    last_sweep = time.monotonic()
                    self.worker.writer.take_turn(older_than=tuning.sweep_age)
            except RedisError as error:  # Redis gone: try again in a second, not at once
                logger.warning("writing ended runs: Redis failed, trying again: %s", error)
                self.stopped.wait(1.0)
            except Exception:
                logger.exception("writing ended runs failed")
                self.stopped.wait(1.0)

    def _write_ended(self) -> None:
        """Write the ended runs the worker asked for. The request is taken before writing, so
        one made during the write is honoured by another write right after; it is kept when
        the write did not happen (the lock held, or an error)."""
        self._write = False
        written = False
        try:
            written = self.worker.writer.take_turn()
        finally:
            if not written:
                self._write = True

    def enqueue_due_retries(self) -> int:
        """Move retries whose delay has passed back to their queues."""
        return self.context.runs.enqueue_due_retries([q.name for q in self.worker.queues])

    def stop(self) -> None:
        """End the loops and wait for them."""
        self.stopped.set()
        self._wake.set()
        for thread in (self, self._writer):
            if thread.is_alive():
                thread.join(timeout=5)
