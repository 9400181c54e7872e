"""The ezgraph worker: an RQ worker whose step costs one Redis round trip.

Each ``finish_and_claim`` call finishes the jobs it ran since the last call as RQ would, records
their steps with the completions :mod:`ezgraph.completion` planned (creating the ready
successors), and claims the next jobs into this worker's claimed list, never a bare pop. Jobs
stay ordinary RQ jobs: ``rq info``, ``Job.fetch`` and rq-dashboard read them as usual.

Its heartbeat (:mod:`ezgraph.liveness`) speaks for every job it claimed; every worker's
maintenance pass gives back the claims of workers whose heartbeat expired, so the steps of a
worker that was SIGKILLed (or whose machine died) run again within seconds.

Select it with ``ezgraph worker`` or ``rq worker -w ezgraph.workers.fast.FastWorker``. Jobs on
its queues that are no ezgraph step run the stock way.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.queue import Queue
from rq.worker import SimpleWorker, WorkerStatus

from .. import completion, recovery, rq_compat
from ..connection import check_eviction
from ..context import Context
from ..handover import RunWriter, start_notifier
from ..liveness import Heartbeat
from ..model.step_job import StepJob
from ..rq_compat import ClaimedJob
from ..settings import Settings
from ..state.protocol import Claim, CompletionRequest, Finished
from .maintenance import Maintenance

logger = logging.getLogger(__name__)


class PendingFinish(NamedTuple):
    """A step that succeeded, finished (and recorded) by the next call."""

    job: ClaimedJob
    finished: Finished
    request: CompletionRequest


class FastWorker(SimpleWorker):
    """An RQ SimpleWorker with a one-round-trip step loop and crash-safe claims.

    Jobs are claimed up to ``claim_batch`` per call. A claim is crash-safe, but the whole
    claimed batch of a worker that dies runs again elsewhere; after a long step
    (``Tuning.long_step``) it claims one job at a time, so other workers share the queue.
    """

    def __init__(
        self,
        queues: Any,
        *args: Any,
        context: Context | None = None,
        claim_batch: int | None = None,
        replace_when_stuck: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(queues, *args, **kwargs)
        self.context = context or Context(Settings.from_env(), self.connection)
        self.tuning = self.context.tuning
        self.writer = RunWriter(self.context, self.name)
        self.claim_batch = max(1, claim_batch or self.context.settings.claim_batch)
        self.steps_done = 0
        self._stop = threading.Event()
        self._held: list[ClaimedJob] = []  # claimed and not yet finished
        self._pending: list[PendingFinish] = []
        self._calls = 0
        self._execution_prefix = uuid.uuid4().hex[:12]
        self._last_contact = time.monotonic()  # when Redis last answered a claim
        self._running: tuple[ClaimedJob, float] | None = None  # the step running, since when
        self._stop_by: float | None = None  # when a worker told to stop must have stopped
        # A step that caught its timeout and goes on: exec this worker again (its command
        # line) or, run under another's command (rq worker -w), exit for its supervisor.
        self.replace_when_stuck = replace_when_stuck

    # -- the loop ---------------------------------------------------------------------------

    def work(  # type: ignore[override]
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        with_scheduler: bool = True,
        max_jobs: int | None = None,
        **kwargs: Any,
    ) -> bool:
        """Serve the queues until stopped (or, in burst mode, until they are empty).

        Raises:
            UnsafeRedis: when Redis would evict keys at maxmemory (refused before any work).
        """
        check_eviction(self.connection)
        logging.getLogger("rq.worker").setLevel(logging_level or "INFO")  # rq CLI may pass None
        self.register_birth()  # type: ignore[no-untyped-call]
        self.set_state(WorkerStatus.IDLE)  # rq info shows '?' for a worker with no state
        heartbeat = Heartbeat(
            self.connection,
            self.context.keys,
            self.tuning,
            lambda: self.name,
            tick=self.tuning.beat_every,
            extra=self._beat_extra,
            after_beat=self._watch_itself,
        )
        heartbeat.beat(self.name)  # alive, and in the workers set, from the start
        heartbeat.start()
        self._install_stop_handlers()
        # A burst worker (ezgraph run, worker --burst) serves what is there: it starts no runs.
        maintenance = Maintenance(self, with_scheduler, fire_schedules=with_scheduler and not burst)
        maintenance.start()
        notifier = start_notifier(self.context, self.writer)  # with FLOW_ORCHESTRATION_URL
        signal.signal(signal.SIGALRM, rq_compat.raise_timeout)
        try:
            return self._loop(maintenance, burst, with_scheduler, max_jobs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            maintenance.stop()
            heartbeat.stop()
            self._leave()
            if notifier is not None:
                notifier.stop()

    def _leave(self) -> None:
        """Finish what was run, give back what is claimed, say goodbye, write what waits. With
        Redis gone, one line: the others' recovery gives its claims back once it returns."""
        try:
            if self._pending:
                self._finish_and_claim([], 0)
            # Normally nothing is left; told to stop, one try (Redis may be gone).
            self.context.runs.requeue_claims(self.name, None, until=self._stop)
            self.connection.delete(self.context.keys.alive(self.name))
            self.register_death()  # type: ignore[no-untyped-call]
            self.writer.take_turn(final=True)
        except (RedisConnectionError, RedisTimeoutError) as error:
            logger.warning("worker %s: stopped with Redis unreachable (%s)", self.name, error)

    def _loop(
        self, maintenance: Maintenance, burst: bool, with_scheduler: bool, max_jobs: int | None
    ) -> bool:
        queues = [queue.name for queue in self.queues]
        wake_lists = [self.context.keys.wake(name) for name in queues]
        claimed: list[ClaimedJob] = []
        batch = self.claim_batch
        worked = False
        while True:
            try:
                if claimed and time.monotonic() - self._last_contact > self.tuning.beat_ttl:
                    claimed = self._still_held(claimed)  # this worker may have been taken for dead
                if claimed:
                    worked = True
                    began = time.monotonic()
                    self._perform(claimed.pop(0))
                    long_step = time.monotonic() - began > self.tuning.long_step
                    batch = 1 if long_step else self.claim_batch
                    if claimed:
                        continue
                stopping = self._stop.is_set() or (
                    max_jobs is not None and self.steps_done >= max_jobs
                )
                claimed = self._finish_and_claim([] if stopping else queues, batch)
                if claimed:
                    if self.writer.due(busy=True):  # the maintenance thread writes them
                        maintenance.write_soon()
                        self.writer.wrote()
                    continue
                if self.writer.waiting:
                    self._write_when_idle(maintenance, wake_lists)
                    continue
                if burst and with_scheduler and maintenance.enqueue_due_retries():
                    continue
                if stopping or burst:
                    return worked
                self.connection.blpop(wake_lists, timeout=self.tuning.idle_wait)
            except (RedisConnectionError, RedisTimeoutError) as error:
                if self._stop.is_set():
                    return worked  # told to stop, Redis gone: the others recover its claims
                self._wait_for_redis(error)

    def _write_when_idle(self, maintenance: Maintenance, wake_lists: list[str]) -> None:
        """Idle with ended runs to write: write them now (in the writer thread: SQL never holds
        up this loop), unless this worker wrote a moment ago; then listen for work a little."""
        if self.writer.due(busy=False):
            maintenance.write_soon()
            self.writer.wrote()
        else:
            self.connection.blpop(wake_lists, timeout=self.tuning.batch_wait)

    def _finish_and_claim(self, queues: Sequence[str], batch: int) -> list[ClaimedJob]:
        """Finish (and record) the steps run since the last call, and claim up to ``batch``
        jobs of ``queues``, in one call."""
        pending, self._pending = self._pending, []
        self._calls += 1
        prefix = f"{self._execution_prefix}{self._calls}-"
        claim = Claim(
            worker=self.name,
            claim_ttl=self._claim_ttl(),
            execution_prefix=prefix,
            max_claims=batch,
            idle_mark_ms=int(self.tuning.idle_mark * 1000),
            max_join_input=self.tuning.max_join_input,
        )
        outcomes, claimed = self.context.runs.finish_and_claim(
            claim,
            queues,
            # a step recorded waiting for a signal: its job finishes, there is nothing to record
            [(p.finished, None if p.request.waiting else p.request) for p in pending],
            until=self._stop,
        )
        self._last_contact = time.monotonic()
        for done, outcome in zip(pending, outcomes, strict=True):
            if outcome is not None and outcome.status == "lost":
                logger.warning(
                    "worker %s: step %s was taken over while this worker was silent;"
                    " its end here is dropped",
                    self.name,
                    done.job.id,
                )
                items = done.request.map_items if done.request else None
                if items is not None:  # the worker that took it over maps on its own
                    self.context.runs.discard_map(items.run_id, items.token)
            elif outcome is not None:
                completion.settle(self.context, done.request, outcome, self.writer.ended)
            self.steps_done += 1
        timeout = self.context.settings.job_timeout
        jobs = [
            rq_compat.claimed_job(row, self.name, f"{prefix}{n}", timeout)
            for n, row in enumerate(claimed, start=1)
        ]
        ended = {finish.job.id for finish in pending}
        self._held = [held for held in self._held if held.id not in ended] + jobs
        return jobs

    def _perform(self, job: ClaimedJob) -> None:
        """Run a claimed job; a step that succeeded is finished by the next call."""
        try:
            func_name, args, kwargs = rq_compat.decode_call(job.data)
        except Exception:
            func_name, args, kwargs = "", (), {}
        if func_name != rq_compat.STEP_FUNCTION or args:
            rq_compat.perform_job(self, job)
            self._release(job)
            return
        step = completion.StepRun(
            self.context, StepJob.from_kwargs(kwargs), completion.Attempt.of(job)
        )
        try:
            if job.timeout > 0:
                signal.setitimer(signal.ITIMER_REAL, job.timeout)
            self._running = (job, time.monotonic())
            try:
                request = step.call()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                self._running = None
        except Exception as error:
            if self._pending:  # record the steps that succeeded before this one, in order
                self._finish_and_claim([], 0)
            with_run = completion.fail(step, error, self.writer.ended)
            ttl = self.context.settings.run_ttl if with_run else None
            rq_compat.fail_job(self, job, traceback.format_exc(), failure_ttl=ttl)
            self._release(job)
            if not self._held:  # its batch's other claimed jobs still run: busy until then
                self.set_state(WorkerStatus.IDLE)
            return
        finished = Finished(
            job_id=job.id,
            queue=job.queue,
            result_ttl=job.result_ttl,
            return_value=rq_compat.encode_return_value(request.output),
            execution=job.execution_id,
            execution_started=repr(job.started),
            completion=0 if request.waiting else 1,
        )
        self._pending.append(PendingFinish(job, finished, request))

    def _release(self, job: ClaimedJob) -> None:
        """A job ended outside a claim call: it leaves this worker's claimed list."""
        self.connection.lrem(self.context.keys.claimed(self.name), 1, job.id)
        self._held = [held for held in self._held if held.id != job.id]

    def _wait_for_redis(self, error: Exception) -> None:
        """Redis went away outside a claim (a claim waits for it itself): wait for it. What
        this worker claimed stays claimed; if another worker took it over meanwhile, the claim
        call drops its end (``lost``)."""
        logger.warning("worker %s: Redis unreachable (%s), waiting for it", self.name, error)
        delay = 0.1
        while not self._stop.is_set():
            try:
                self.connection.ping()
                break
            except (RedisConnectionError, RedisTimeoutError):
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        else:
            return
        if not self.connection.exists(self.key):  # a restart without persistence lost it
            self.register_birth()  # type: ignore[no-untyped-call]
            self.set_state(WorkerStatus.IDLE)
        logger.warning("worker %s: Redis is back", self.name)

    def _still_held(self, claimed: list[ClaimedJob]) -> list[ClaimedJob]:
        """The claimed jobs this worker still holds, after a silence long enough for others to
        take it for dead and give its claims back (a pause, a stalled Redis)."""
        held = set(self.connection.lrange(self.context.keys.claimed(self.name), 0, -1))
        kept = [job for job in claimed if job.id.encode() in held]
        if len(kept) < len(claimed):
            logger.warning(
                "worker %s: %d claimed steps were taken over while it was silent",
                self.name,
                len(claimed) - len(kept),
            )
        self._held = [job for job in self._held if job.id.encode() in held]
        return kept

    def _claim_ttl(self) -> int:
        # A claimed job's execution must outlive its step, else `rq info` (which cleans the
        # started registry) would fail it as abandoned; the heartbeat keeps it fresh too.
        return self.context.settings.job_timeout + 60

    def _beat_extra(self, pipe: Any) -> None:
        """What this worker's heartbeat adds: its place in the workers set (back, if it was
        once taken for dead), and RQ's view of it and of its claimed jobs."""
        pipe.sadd(self.context.keys.workers, self.name)
        rq_compat.beat_worker(pipe, self, list(self._held), self._claim_ttl())

    def _watch_itself(self) -> None:
        """After each heartbeat: a step that caught its timeout and runs on, or a stop that
        its current step delays past the grace, ends this process (its claims given back)."""
        now, running = time.monotonic(), self._running
        if running is not None and running[0].timeout > 0:
            job, since = running
            if now - since > job.timeout + self.tuning.stuck_grace:
                self._end_stuck(job)
        if self._stop_by is not None and now > self._stop_by:
            logger.warning("worker %s: its step did not end within the stop grace", self.name)
            self._exit_now()

    def _end_stuck(self, job: ClaimedJob) -> None:
        """A step ran past its timeout and did not stop: give its claims back as a dead worker
        would (each counting a death, so a step that keeps doing it fails), then replace this
        worker, or exit."""
        reason = f"ran past its timeout of {job.timeout} s and did not stop"
        logger.error("worker %s: step %s %s; the worker replaces itself", self.name, job.id, reason)
        recovery.give_back_claims(self.context, self.name, reason, self.writer.write_now)
        self.register_death()  # type: ignore[no-untyped-call]
        if self.replace_when_stuck and not self._stop.is_set():
            os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
        os._exit(0 if self._stop.is_set() else 70)

    def _exit_now(self) -> None:
        """Stop at once: give back every claim (run again elsewhere) and exit. With Redis gone,
        exit all the same: the others' recovery gives the claims back once it returns."""
        try:
            self.context.runs.requeue_claims(self.name, None, until=self._stop)
            self.register_death()  # type: ignore[no-untyped-call]
        except (RedisConnectionError, RedisTimeoutError) as error:
            logger.warning("worker %s: exits with Redis unreachable (%s)", self.name, error)
        os._exit(0)

    def _install_stop_handlers(self) -> None:
        def request_stop(signum: int, _frame: Any) -> None:
            if self._stop.is_set():  # asked twice: stop now
                self._exit_now()
            logger.info("worker %s: stopping after the current step", self.name)
            self._stop_by = time.monotonic() + self.tuning.stop_grace
            self._stop.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, request_stop)
            signal.signal(signal.SIGTERM, request_stop)


def serve(
    context: Context,
    nodes: Sequence[str] | None = None,
    burst: bool = False,
    log_level: str = "INFO",
    with_scheduler: bool = True,
    claim_batch: int | None = None,
    replace_when_stuck: bool = False,
) -> bool:
    """Run an ezgraph worker on ``nodes``, in that order of priority (default: every node of
    the graph, sink first: later steps of runs under way before the first steps of new runs).
    Returns whether it performed a job."""
    graph = context.graph()
    queues = [Queue(node, connection=context.connection) for node in (nodes or graph.sink_first())]
    worker = FastWorker(
        queues,
        connection=context.connection,
        context=context,
        claim_batch=claim_batch,
        replace_when_stuck=replace_when_stuck,
    )
    return worker.work(burst=burst, logging_level=log_level, with_scheduler=with_scheduler)


def serve_until_ended(context: Context, run_id: str) -> None:
    """Serve every queue of the graph in bursts until run ``run_id`` has stopped
    (``ezgraph run``); with the scheduler, so a step's delayed retry runs here too."""
    while True:
        serve(context, burst=True, log_level="WARNING")
        live = context.runs.read(run_id)
        if live is None or live.header.get("status") in ("finished", "failed", "canceled"):
            return
        time.sleep(0.2)  # a retry waits for its interval (or a step runs elsewhere)
