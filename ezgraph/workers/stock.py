"""What a stock RQ worker's process needs to run ezgraph steps: a heartbeat and a run writer.

Stock workers (``rq worker``, fork or SimpleWorker) only call the step function with its job,
so ezgraph keeps one :class:`StockProcess` per process and connection, made at its first step:

- **liveness**: a :class:`~ezgraph.liveness.Heartbeat` beats for the worker while one of its
  steps has run ``beat_after`` seconds, and at once at the process's first step (a forked
  work-horse's only one), before the module is imported;
- **the hand-over to SQL**: runs that end here are written by a thread, in batches, with the
  one policy of :class:`~ezgraph.handover.RunWriter` (unless ``persist --follow`` writes them),
  and once more when the process exits normally. A forked work-horse exits (``os._exit``)
  right after its job, so there a run that ends is written at once;
- **notifications** (``FLOW_ORCHESTRATION_URL``): a notifier thread POSTs the runs written,
  except in a forked work-horse (:mod:`ezgraph.notify`: another process sends its runs').
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, ClassVar

from redis.exceptions import RedisError
from rq.job import Job

from .. import completion, rq_compat
from ..connection import check_eviction
from ..context import Context
from ..errors import UnsafeRedis
from ..handover import RunWriter, start_notifier
from ..liveness import Heartbeat
from ..model.step_job import StepJob
from ..settings import Settings

if TYPE_CHECKING:  # started by handover.start_notifier: a type only
    from ..notify import Notifier

logger = logging.getLogger(__name__)


class StockProcess:
    """ezgraph's duties in one stock worker process (see the module doc)."""

    _by_connection: ClassVar[dict[tuple[int, int], StockProcess]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, context: Context) -> None:
        self.context = context
        self.writer = RunWriter(context, f"stock-{os.getpid()}")
        self._step: tuple[str, float] | None = None  # the running step's worker, its start
        self._last_step = 0.0  # when the last step ended (monotonic)
        self._wake = threading.Event()
        self._stopped = threading.Event()
        tuning = context.tuning
        self.heartbeat = Heartbeat(
            context.connection, context.keys, tuning, self._beating, tick=tuning.stock_tick
        )
        self.notifier: Notifier | None = None
        self._writer_thread = threading.Thread(
            target=self._write_when_due, name="ezgraph-stock-writer", daemon=True
        )

    @classmethod
    def for_rq_job(cls, job: Job) -> StockProcess:
        """This process's duties for the connection of ``job``, started at the first step
        (settings from the worker's environment: ``DATABASE_URL``, ``EZGRAPH_KEY_PREFIX``...)."""
        key = (os.getpid(), id(job.connection))  # a forked child starts its own
        with cls._registry_lock:
            process = cls._by_connection.get(key)
            if process is None:
                process = cls(Context(Settings.from_env(), job.connection))
                # A forked work-horse ends with its job: its runs are sent by another process.
                process.start(notify=os.environ.get("RQ_JOB_ID") != job.id)
                cls._by_connection[key] = process
            return process

    def start(self, notify: bool = False) -> None:
        """Start the heartbeat and the writer, and with ``notify`` the notifier (when
        ``FLOW_ORCHESTRATION_URL`` is set); write what is left when the process exits."""
        try:
            check_eviction(self.context.connection)
        except UnsafeRedis as error:  # a stock worker cannot be refused: say it at each start
            logger.error("%s", error)
        self.heartbeat.start()
        self._writer_thread.start()
        if notify:
            self.notifier = start_notifier(self.context, self.writer)
        atexit.register(self._write_at_exit)

    def run(self, job: StepJob, rq_job: Job) -> dict:  # type: ignore[type-arg]
        """Run one step of ``rq_job`` and record its end."""
        runs = self.context.runs
        if rq_job.ended_at is not None and runs.dropped_from_queue(
            job.run_id, job.step, rq_job.key
        ):
            # Canceled while it waited in a long queue, which keeps the id (rq.cancel_waiting):
            # RQ runs what it pops; the step does not run. (A fresh job has no ended_at.)
            return {}
        step = completion.StepRun(self.context, job, completion.Attempt.of(rq_job))
        in_forked_child = os.environ.get("RQ_JOB_ID") == rq_job.id  # RQ sets it in a horse
        ended = self.writer.write_now if in_forked_child else self.run_ended
        self._step = (rq_job.worker_name or "", time.monotonic())
        if not self.heartbeat.has_beaten and rq_job.worker_name:
            # A process's first step beats at once, before its module is imported: an import
            # that holds the interpreter for seconds would keep the heartbeat thread from it.
            self.heartbeat.beat(rq_job.worker_name)
        try:
            return completion.run_and_record(
                step, ended, lambda: rq_compat.expire_with_run(rq_job, self.context.settings)
            )
        finally:
            self._step = None
            self._last_step = time.monotonic()

    def _beating(self) -> str | None:
        """The worker to beat for: the running step's, once it has run ``beat_after``."""
        step = self._step
        if step is None or not step[0]:
            return None
        return step[0] if time.monotonic() - step[1] >= self.context.tuning.beat_after else None

    def run_ended(self, run_id: str) -> None:
        """A step of this process ended run ``run_id``: the writer thread writes it soon."""
        if self.writer.follower_writes():
            return  # it waits in Redis's unsaved set for persist --follow
        first = not self.writer.waiting
        self.writer.ended(run_id)
        if first:
            self._wake.set()

    def _write_when_due(self) -> None:
        """The writer thread: write ended runs when the policy says, retrying a held lock."""
        tuning = self.context.tuning
        while not self._stopped.is_set():
            self._wake.wait(tuning.write_retry if self.writer.waiting else tuning.stock_tick)
            self._wake.clear()
            try:
                busy = self._step is not None or (
                    time.monotonic() - self._last_step < tuning.idle_write_gap
                )
                self.flush(busy)
            except (RedisError, OSError) as error:  # try again in a second, not at once
                logger.warning("writing ended runs failed, trying again: %s", error)
                self._stopped.wait(1.0)

    def flush(self, busy: bool = False) -> None:
        """Write the runs this process ended, when the policy says (``persist --follow``, when
        it runs, writes them instead; a held write lock is asked for again next time)."""
        if not self.writer.waiting:
            return
        if self.writer.follower_writes() or (self.writer.due(busy) and self.writer.take_turn()):
            self.writer.wrote()

    def stop(self) -> None:
        """Stop the threads, writing what waits (a process that ends does so at exit)."""
        self._stopped.set()
        self._wake.set()
        self.heartbeat.stop()
        self._writer_thread.join(timeout=5)
        self._write_at_exit()
        if self.notifier is not None:
            self.notifier.stop()

    def _write_at_exit(self) -> None:
        if self.writer.waiting and not self.writer.follower_writes():
            self.writer.take_turn(final=True)
