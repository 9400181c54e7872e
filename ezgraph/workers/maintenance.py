"""An ezgraph worker's maintenance thread: recovery, due retries, schedules and the hand-over
to SQL.

Once a second: give back dead workers' claims and make the watchdog's pass
(:mod:`ezgraph.recovery`, the pass one worker at a time, which also fires the due schedules:
:mod:`ezgraph.schedules`), move retries whose delay has passed to their queues (RQ's
scheduler's job), and write the ended runs nobody wrote (their worker
died, or the database was down). In between, it writes the runs its worker ended when the
worker, busy, asks (:meth:`Maintenance.write_soon`): the write then runs while the worker's
loop waits on Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from .. import recovery
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

    def write_soon(self) -> None:
        """Write the ended runs to SQL in this thread, now (the worker is busy)."""
        self._write = True
        self._wake.set()

    def run(self) -> None:
        """Loop until :meth:`stop`; a failing pass is logged, never fatal."""
        tuning = self.context.tuning
        last_pass = time.monotonic()
        while not self.stopped.is_set():
            next_pass = last_pass + 1.0 - time.monotonic()
            # While another process holds the write lock, ask again shortly.
            self._wake.wait(
                min(tuning.write_retry, next_pass) if self._write else max(0.0, next_pass)
            )
            self._wake.clear()
            if self.stopped.is_set():
                break
            try:
                if self._write:
                    self._write_ended()
                if time.monotonic() - last_pass < 1.0:
                    continue
                last_pass = time.monotonic()
                self.maintain()
            except Exception:
                logger.exception("worker maintenance failed")

    def maintain(self) -> None:
        """One pass of the duties done once a second."""
        context, writer = self.context, self.worker.writer
        recovery.recover_dead_workers(context, writer.ended)
        # Not released: it lets one pass a second through, whichever worker makes it.
        if context.connection.set(context.keys.watch_lock, self.worker.name, nx=True, px=900):
            recovery.watch_runs(context, writer.ended)
            if self.schedules is not None:
                self.schedules.fire_due()
        if self.with_scheduler:
            self.enqueue_due_retries()
        # Runs a dead worker left, or that ended while the database was down.
        writer.take_turn(older_than=context.tuning.sweep_age)

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
        """End the loop and wait for it."""
        self.stopped.set()
        self._wake.set()
        if self.is_alive():
            self.join(timeout=5)
