"""The fast worker: an RQ worker whose step costs one Redis round trip.

Each call of ``fast.lua`` finishes the previous job as RQ would (status, result stream, finished
registry, execution), records its step and creates its ready successors, and claims the next job
into this worker's claimed list (``<prefix>:claimed:<worker>``), never a bare pop. Jobs stay
ordinary RQ jobs: ``rq info``, ``Job.fetch`` and rq-dashboard read them as usual.

A heartbeat thread keeps this worker's liveness key fresh, even during a long step. Every
worker's maintenance pass gives back the claimed jobs of workers whose liveness key expired, so
the steps of a worker that was SIGKILLed (or whose machine died) run again within seconds.

Select it with ``ezgraph worker`` (the default) or ``rq worker -w ezgraph.fast_worker.FastWorker``.
Non-ezgraph jobs on its queues are run the stock way.
"""

from __future__ import annotations

import base64
import logging
import os
import pickle
import signal
import threading
import time
import traceback
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import JobTimeoutException
from rq.worker import SimpleWorker

from .bookkeeping import outcome_of, utcnow_iso
from .faults import crash_point
from .runtime import STEP_FUNCTION, Runtime, StepInput
from .settings import Settings
from .step import Completion, after_completion, install_runtime, run_module
from .watchdog import watch_runs

logger = logging.getLogger(__name__)

ALIVE_TTL = 5  # seconds without a heartbeat before a worker counts as dead
HEARTBEAT_EVERY = 1.0
IDLE_WAIT = 1  # seconds an idle worker blocks on its queues' bells before looking again
# Jobs are claimed up to EZGRAPH_CLAIM_BATCH per call. A claim is crash-safe, but the whole
# claimed batch of a worker that dies runs again elsewhere, and a claimed job counts as running
# (a failure of its run does not cancel it); after a step slower than 50 ms, one at a time.


def _raise_timeout(signum: int, frame: Any) -> None:
    raise JobTimeoutException("Task exceeded maximum timeout value")


@dataclass
class ClaimedJob:
    """What a step needs of its RQ job, read from the claim reply (no Job object built)."""

    id: str
    queue: str
    retries_left: int | None
    meta: dict[str, Any]
    worker_name: str
    timeout: int
    result_ttl: int
    execution_id: str
    data: bytes = b""
    started: float = field(default_factory=time.time)


@dataclass
class Finished:
    """The previous step, to be finished by the next fast call."""

    job: ClaimedJob
    return_value: str
    completion: Completion | None
    package: str


class FastWorker(SimpleWorker):
    """An RQ SimpleWorker with a one-round-trip step loop and crash-safe claims."""

    def __init__(
        self,
        queues: Any,
        *args: Any,
        runtime: Runtime | None = None,
        claim_batch: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(queues, *args, **kwargs)
        self.runtime = runtime or Runtime(Settings.from_env(), self.connection)
        self.prefix = self.runtime.settings.key_prefix
        self._stop = threading.Event()
        self._current: ClaimedJob | None = None
        self._held: list[ClaimedJob] = []
        self._finished: list[Finished] = []
        self.runs_ended = threading.Event()  # set when this worker ended a run not yet in SQL
        self.steps_done = 0
        self.claim_batch = max(1, claim_batch or self.runtime.settings.claim_batch)
        self._calls = 0
        self._exec_prefix = uuid.uuid4().hex[:12]

    # -- the loop ---------------------------------------------------------------------------

    def work(  # type: ignore[override]
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        with_scheduler: bool = True,
        max_jobs: int | None = None,
        **kwargs: Any,
    ) -> bool:
        """Serve the queues until stopped (or, in burst mode, until they are empty)."""
        logging.getLogger("rq.worker").setLevel(logging_level or "INFO")  # rq CLI may pass None
        install_runtime(self.runtime)
        self.register_birth()  # type: ignore[no-untyped-call]
        self.connection.sadd(f"{self.prefix}:workers", self.name)
        self._beat()
        self._install_stop_handlers()
        duties = Duties(self, with_scheduler=with_scheduler)
        duties.start()
        queue_names = [queue.name for queue in self.queues]
        bells = [f"{self.prefix}:bell:{name}" for name in queue_names]
        signal.signal(signal.SIGALRM, _raise_timeout)
        claimed: list[ClaimedJob] = []
        batch = self.claim_batch
        worked = False
        try:
            while True:
                try:
                    if claimed:
                        job = claimed.pop(0)
                        worked = True
                        began = time.monotonic()
                        outcome = self._perform(job)
                        if outcome is not None:
                            self._finished.append(outcome)
                        # Long steps: claim one at a time, so other workers share the queue.
                        batch = 1 if time.monotonic() - began > 0.05 else self.claim_batch
                        if claimed:
                            continue
                    stopping = self._stop.is_set() or (
                        max_jobs is not None and self.steps_done >= max_jobs
                    )
                    claimed = self._fast_call([] if stopping else queue_names, batch)
                    if claimed:
                        continue
                    if burst and with_scheduler and duties.enqueue_due_retries():
                        continue
                    if stopping or burst:
                        break
                    self.connection.blpop(bells, timeout=IDLE_WAIT)
                except (RedisConnectionError, RedisTimeoutError) as error:
                    self._finished, claimed = [], []
                    self._recover_from_outage(error)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            if self._finished:
                self._fast_call([], 0)
            duties.stop()
            self._give_back_claims()
            self.connection.srem(f"{self.prefix}:workers", self.name)
            self.connection.delete(f"{self.prefix}:alive:{self.name}")
            self.register_death()  # type: ignore[no-untyped-call]
            install_runtime(None)
            duties.save_ended(final=True)
        return worked

    def _fast_call(self, queues: Sequence[str], batch: int) -> list[ClaimedJob]:
        """Finish the jobs run since the last call and claim up to ``batch`` jobs of ``queues``,
        in one Lua call."""
        finished, self._finished = self._finished, []
        self._calls += 1
        exec_prefix = f"{self._exec_prefix}{self._calls}-"
        args: list[Any] = [
            self.name,
            self._claim_ttl(),
            exec_prefix,
            batch,
            len(queues),
            *queues,
            len(finished),
        ]
        for done in finished:
            job, completion = done.job, done.completion
            completion_args = completion.args if completion else ()
            args += [
                job.id, job.queue, job.result_ttl, done.return_value, job.execution_id,
                repr(job.started), completion.run_id if completion else "",
                len(completion_args), *completion_args,
            ]  # fmt: skip
        reply = self.runtime.book.call("fast", "", *args)
        for done, raw in zip(finished, reply[0], strict=True):
            if done.completion is None:
                continue
            crash_point(self.connection, self.prefix, "after_record", done.completion.step)
            outcome = outcome_of(raw)
            # The duties thread writes ended runs in batches (save=False).
            after_completion(
                self.runtime,
                done.package,
                done.completion,
                outcome.missing,
                outcome.run_ended,
                save=False,
            )
            if outcome.run_ended:
                self.runs_ended.set()
            self.steps_done += 1
        jobs: list[ClaimedJob] = []
        fields = reply[1:]
        settings = self.runtime.settings
        for n in range(0, len(fields), 7):
            job_id, queue, data, timeout, retries_left, meta, result_ttl = fields[n : n + 7]
            job = ClaimedJob(
                id=job_id.decode(),
                queue=queue.decode(),
                retries_left=int(retries_left) if retries_left is not None else None,
                meta=pickle.loads(meta) if meta else {},
                worker_name=self.name,
                timeout=int(timeout) if timeout is not None else settings.job_timeout,
                result_ttl=int(result_ttl) if result_ttl is not None else 500,
                execution_id=f"{exec_prefix}{n // 7 + 1}",
                data=data,
            )
            jobs.append(job)
        self._current = jobs[0] if jobs else None
        self._held = list(jobs)
        return jobs

    def _record_finished(self) -> None:
        """Record the steps that succeeded before the one failing now, in the order they ran."""
        if self._finished:
            self._fast_call([], 0)

    def _recover_from_outage(self, error: Exception) -> None:
        """Redis went away mid-call: wait for it, then give back every claim and start over.

        The lost call may or may not have run, so the step it finished runs again (its
        completion is recorded once) and whatever it may have claimed goes back to its queue.
        """
        logger.warning("worker %s: Redis unreachable (%s), waiting for it", self.name, error)
        self._current = None
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
        self._give_back_claims()
        if not self.connection.exists(self.key):  # a restart without persistence lost it
            self.register_birth()  # type: ignore[no-untyped-call]
        self.connection.sadd(f"{self.prefix}:workers", self.name)
        self._beat()
        logger.warning("worker %s: Redis is back", self.name)

    def _claim_ttl(self) -> int:
        # The started registry's score must outlive the step, else `rq info` (which cleans the
        # registry) would fail it as abandoned; the heartbeat thread keeps it fresh too.
        return self.runtime.settings.job_timeout + 60

    def _perform(self, claimed: ClaimedJob) -> Finished | None:
        """Run a claimed job; returns what the next fast call finishes (None after a failure)."""
        data = claimed.data
        try:
            func_name, _instance, args, kwargs = pickle.loads(zlib.decompress(data))
        except Exception:
            func_name, args, kwargs = "", (), {}
        if func_name != STEP_FUNCTION or args:
            self._perform_stock(claimed)
            return None
        step_input = StepInput(
            state=kwargs.get("state"),
            gather=kwargs.get("gather", False),
            index=kwargs.get("index"),
            item=kwargs.get("item"),
            key=kwargs.get("key", "item"),
        )
        try:
            self._current = claimed
            if claimed.timeout > 0:
                signal.setitimer(signal.ITIMER_REAL, claimed.timeout)
            try:
                completion = run_module(
                    self.runtime,
                    claimed,
                    kwargs["run_id"],
                    kwargs["node"],
                    kwargs["package"],
                    step_input,
                    before_failure=self._record_finished,
                )
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except Exception:
            self._fail(claimed, traceback.format_exc())
            return None
        value = base64.b64encode(
            pickle.dumps(completion.output, protocol=pickle.HIGHEST_PROTOCOL)
        ).decode()
        return Finished(claimed, value, completion, kwargs["package"])

    def _fail(self, claimed: ClaimedJob, exc_string: str) -> None:
        """Hand a failed job to RQ's own failure handling (retry or failed registry)."""
        job = Job.fetch(claimed.id, connection=self.connection)
        job.ended_at = job.ended_at or None
        self.execution = Execution(claimed.execution_id, claimed.id, connection=self.connection)
        queue = Queue(claimed.queue, connection=self.connection)
        self.handle_job_failure(job, queue, exc_string=exc_string)
        self.connection.lrem(f"{self.prefix}:claimed:{self.name}", 1, claimed.id)
        self.connection.hset(self.key, mapping={"state": "idle", "current_job": ""})
        self._current = None

    def _perform_stock(self, claimed: ClaimedJob) -> None:
        """A job that is not an ezgraph step: run it the way SimpleWorker does."""
        job = Job.fetch(claimed.id, connection=self.connection)
        queue = Queue(claimed.queue, connection=self.connection)
        self.connection.zrem(f"rq:wip:{claimed.queue}", f"{claimed.id}:{claimed.execution_id}")
        self.execute_job(job, queue)
        self.connection.lrem(f"{self.prefix}:claimed:{self.name}", 1, claimed.id)
        self._current = None

    # -- liveness ---------------------------------------------------------------------------

    def _beat(self) -> None:
        """Say this worker is alive; keep its claimed jobs' started-registry entries fresh."""
        pipe = self.connection.pipeline(transaction=False)
        pipe.set(f"{self.prefix}:alive:{self.name}", os.getpid(), ex=ALIVE_TTL)
        pipe.hset(self.key, "last_heartbeat", utcnow_iso())
        pipe.expire(self.key, self.worker_ttl + 60)
        score = time.time() + self._claim_ttl()
        for held in list(self._held):  # every claimed job, running or waiting its turn
            pipe.zadd(f"rq:wip:{held.queue}", {f"{held.id}:{held.execution_id}": score}, xx=True)
        pipe.execute()

    def _install_stop_handlers(self) -> None:
        def request_stop(signum: int, _frame: Any) -> None:
            logger.info("worker %s: stopping after the current step", self.name)
            self._stop.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, request_stop)
            signal.signal(signal.SIGTERM, request_stop)

    def _give_back_claims(self) -> None:
        """On a clean exit, put back anything still claimed (nothing, normally)."""
        self.runtime.book.call("requeue_claimed", "", self.name)


class Duties(threading.Thread):
    """A worker's background duties, each second: heartbeat, give back dead workers' claims,
    move due retries to their queues, and write ended runs to SQL in batches."""

    def __init__(self, worker: FastWorker, with_scheduler: bool = True) -> None:
        super().__init__(name=f"ezgraph-duties-{worker.name}", daemon=True)
        self.worker = worker
        self.runtime = worker.runtime
        self.with_scheduler = with_scheduler
        self.stopped = threading.Event()
        self.connection: Redis = worker.connection

    def run(self) -> None:
        """Loop until :meth:`stop`; a failing pass is logged, never fatal."""
        last_sweep = 0.0
        while not self.stopped.wait(0.1):
            try:
                now = time.monotonic()
                if now - last_sweep >= HEARTBEAT_EVERY:
                    last_sweep = now
                    self.worker._beat()
                    reap_dead_workers(self.runtime)
                    self.watch()
                    if self.with_scheduler:
                        self.enqueue_due_retries()
                    self.save_ended()  # every second: runs others left behind, a database back
                elif self.worker.runs_ended.is_set():
                    self.worker.runs_ended.clear()
                    self.save_ended()
            except Exception:
                logger.exception("worker duties pass failed")

    def save_ended(self, final: bool = False) -> None:
        """Write every ended run to SQL, many per transaction; one worker at a time.

        The lock only saves duplicate work (writing a run twice is an upsert), so it is short
        lived: a worker that died holding it delays the others by two seconds at most.
        """
        lock = f"{self.runtime.settings.key_prefix}:lock:persist"
        if final or self.connection.set(lock, self.worker.name, nx=True, px=2_000):
            try:
                self.runtime.save_unsaved()
            finally:
                if not final:
                    self.connection.delete(lock)

    def watch(self) -> None:
        """One watchdog pass over live runs (one worker at a time)."""
        # Not released: it lets one pass a second through, whichever worker makes it.
        lock = f"{self.runtime.settings.key_prefix}:lock:watch"
        if self.connection.set(lock, self.worker.name, nx=True, px=900):
            watch_runs(self.runtime)

    def enqueue_due_retries(self) -> int:
        """Move retries whose delay has passed back to their queues (RQ's scheduler's job)."""
        queues = [q.name for q in self.worker.queues]
        return int(self.runtime.book.call("due", "", *queues))

    def stop(self) -> None:
        """End the loop and wait for it."""
        self.stopped.set()
        if self.is_alive():
            self.join(timeout=5)


def reap_dead_workers(runtime: Runtime) -> list[str]:
    """Give back the claimed jobs of every ezgraph worker whose liveness key expired."""
    prefix = runtime.settings.key_prefix
    connection = runtime.connection
    requeued: list[str] = []
    for raw in connection.smembers(f"{prefix}:workers"):
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        if connection.exists(f"{prefix}:alive:{name}"):
            continue
        ids = runtime.book.call("requeue_claimed", "", name)
        if ids:
            logger.warning("worker %s is gone: requeued %d steps", name, len(ids))
        requeued.extend(i.decode() for i in ids)
    return requeued


def serve(
    runtime: Runtime,
    nodes: Sequence[str] | None = None,
    burst: bool = False,
    log_level: str = "INFO",
    with_scheduler: bool = True,
    claim_batch: int | None = None,
) -> bool:
    """Run a fast worker on ``nodes`` (default: every node of the graph)."""
    graph = runtime.graph()
    queues = [Queue(node, connection=runtime.connection) for node in (nodes or graph.nodes)]
    worker = FastWorker(
        queues, connection=runtime.connection, runtime=runtime, claim_batch=claim_batch
    )
    return worker.work(burst=burst, logging_level=log_level, with_scheduler=with_scheduler)
