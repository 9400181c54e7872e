"""The fast worker: an RQ worker whose step costs one Redis round trip.

Each call of ``fast.lua`` finishes the previous job as RQ would (status, result stream, finished
registry, execution), records its step and creates its ready successors, and claims the next job
into this worker's claimed list (``<prefix>:claimed:<worker>``), never a bare pop. Jobs stay
ordinary RQ jobs: ``rq info``, ``Job.fetch`` and rq-dashboard read them as usual.

A heartbeat thread keeps this worker's liveness key fresh, even during a long step. Every
worker's maintenance pass gives back the claimed jobs of workers whose liveness key expired, so
the steps of a worker that was SIGKILLed (or whose machine died) run again within seconds.

Select it with ``ezgraph worker`` (the default) or ``rq worker -w ezgraph.workers.fast.FastWorker``.
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
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import JobTimeoutException
from rq.worker import SimpleWorker, WorkerStatus

from ..context import STEP_FUNCTION, Runtime, StepInput
from ..faults import crash_point
from ..recovery import DIED, MAX_RECOVERIES, WatchReport, fail_lost_step, watch_runs
from ..settings import Settings
from ..state.runs import outcome_of, utcnow_iso
from ..step import Completion, after_completion, install_runtime, run_module

logger = logging.getLogger(__name__)

ALIVE_TTL = 5  # seconds without a heartbeat before a worker counts as dead
HEARTBEAT_EVERY = 1.0
IDLE_WAIT = 1  # seconds an idle worker blocks on its queues' bells before looking again
IDLE_MARK = 3 * IDLE_WAIT  # seconds its empty claim marks them idle (only then do they ring)
# Ended runs go to SQL many per transaction (one run alone costs ~6x its share of a 100-run
# batch), written by whichever worker holds the write lock, all that are waiting. A worker that
# ended runs and is busy asks its duties thread to write every SAVE_EVERY seconds or SAVE_BATCH
# runs: the thread writes while the step loop waits on Redis. An idle worker writes them itself,
# at once but at most every IDLE_SAVE_GAP seconds: a background write would contend for the GIL
# with the next step, which showed as idle-latency outliers. Until then, or while another
# worker writes, it waits for work with Redis's shortest useful blocking timeout, BATCH_WAIT
# (Redis checks those timeouts 10 times a second by default).
SAVE_EVERY = 0.2
SAVE_BATCH = 100
IDLE_SAVE_GAP = 0.02
BATCH_WAIT = 0.1
WRITE_RETRY = 0.02  # seconds before the duties thread asks again for a held write lock
SWEEP_AGE = 2.0  # the once-a-second sweep writes the runs left unsaved this long (seconds)
# Jobs are claimed up to EZGRAPH_CLAIM_BATCH per call. A claim is crash-safe, but the whole
# claimed batch of a worker that dies runs again elsewhere, and a claimed job counts as running
# (a failure of its run does not cancel it); after a step slower than 50 ms, one at a time.


CLAIM_FIELDS = 8  # fields of each claimed job in fast.lua's reply


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
    gathered: list[Any] | None = None  # a join's input, read by the claim (StepInput.gathered)


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
        self._ended = 0  # runs this worker ended since it last wrote (or handed over) a batch
        self._last_save = 0.0
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
        self.set_state(WorkerStatus.IDLE)  # rq info shows '?' for a worker with no state
        self._beat()  # alive, and in the workers set
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
                        if self._save_due(busy=True):  # in the background, between steps
                            duties.write_soon()
                            self._saved()
                        continue
                    if self._ended:
                        # Idle: write here, now, unless this worker wrote a moment ago or
                        # another one is writing; then wait a little, listening for work.
                        if self._save_due(busy=False) and save_ended(self.runtime, self.name):
                            self._saved()
                        else:
                            self.connection.blpop(bells, timeout=BATCH_WAIT)
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
            save_ended(self.runtime, self.name, final=True)
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
            int(IDLE_MARK * 1000),
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
                self._ended += 1
            self.steps_done += 1
        jobs: list[ClaimedJob] = []
        fields = reply[1:]
        settings = self.runtime.settings
        for n in range(0, len(fields), CLAIM_FIELDS):
            row = fields[n : n + CLAIM_FIELDS]
            job_id, queue, data, timeout, retries_left, meta, result_ttl, gathered = row
            job = ClaimedJob(
                id=job_id.decode(),
                queue=queue.decode(),
                retries_left=int(retries_left) if retries_left is not None else None,
                meta=pickle.loads(meta) if meta else {},
                worker_name=self.name,
                timeout=int(timeout) if timeout is not None else settings.job_timeout,
                result_ttl=int(result_ttl) if result_ttl is not None else 500,
                execution_id=f"{exec_prefix}{n // CLAIM_FIELDS + 1}",
                data=data,
                gathered=gathered,
            )
            jobs.append(job)
        self._current = jobs[0] if jobs else None
        self._held = list(jobs)
        return jobs

    def _save_due(self, busy: bool) -> bool:
        """Whether to write the ended runs now (see SAVE_EVERY)."""
        if not self._ended:
            return False
        waited = time.monotonic() - self._last_save
        if busy:
            return self._ended >= SAVE_BATCH or waited >= SAVE_EVERY
        return waited >= IDLE_SAVE_GAP

    def _saved(self) -> None:
        self._ended = 0
        self._last_save = time.monotonic()

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
        self.set_state(WorkerStatus.IDLE)  # its claims are given back: nothing is running
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
            func_name, _instance, args, kwargs = pickle.loads(job_data(data))
        except Exception:
            func_name, args, kwargs = "", (), {}
        if func_name != STEP_FUNCTION or args:
            self._perform_stock(claimed)
            return None
        step_input = StepInput(
            state=kwargs.get("state"),
            gather=kwargs.get("gather", False),
            gathered=claimed.gathered,
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
        self.set_state(WorkerStatus.IDLE)
        self.set_current_job_id(None)  # as RQ: an empty id would read as a job
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
        pipe.sadd(f"{self.prefix}:workers", self.name)  # back, if it was once taken for dead
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
    """A worker's background duties, each second: give back dead workers' claims, move due
    retries to their queues, and write the ended runs nobody wrote to SQL (their worker died,
    or the database was down) in batches. The heartbeat has a thread of its own: a write to a
    slow or locked database must not let this worker look dead, and its claims run twice."""

    def __init__(self, worker: FastWorker, with_scheduler: bool = True) -> None:
        super().__init__(name=f"ezgraph-duties-{worker.name}", daemon=True)
        self.worker = worker
        self.runtime = worker.runtime
        self.with_scheduler = with_scheduler
        self.stopped = threading.Event()
        self.connection: Redis = worker.connection
        self._wake = threading.Event()
        self._write = False  # the worker asked for a write of ended runs
        self._heart = threading.Thread(
            target=self._beat_until_stopped, name=f"ezgraph-beat-{worker.name}", daemon=True
        )

    def start(self) -> None:
        """Start the duties and the heartbeat."""
        self._heart.start()
        super().start()

    def _beat_until_stopped(self) -> None:
        while not self.stopped.wait(HEARTBEAT_EVERY):
            try:
                self.worker._beat()
            except Exception:
                logger.exception("worker heartbeat failed")

    def write_soon(self) -> None:
        """Write the ended runs to SQL in this thread, now (the worker is busy)."""
        self._write = True
        self._wake.set()

    def run(self) -> None:
        """Loop until :meth:`stop`; a failing pass is logged, never fatal."""
        last_pass = time.monotonic()
        while not self.stopped.is_set():
            next_pass = last_pass + HEARTBEAT_EVERY - time.monotonic()
            # While another worker holds the write lock, ask again shortly.
            self._wake.wait(min(WRITE_RETRY, next_pass) if self._write else max(0.0, next_pass))
            self._wake.clear()
            if self.stopped.is_set():
                break
            try:
                if self._write:
                    self._write_ended()
                if time.monotonic() - last_pass < HEARTBEAT_EVERY:
                    continue
                last_pass = time.monotonic()
                reap_dead_workers(self.runtime)
                self.watch()
                if self.with_scheduler:
                    self.enqueue_due_retries()
                # Runs a dead worker left, or written while the database was down.
                save_ended(self.runtime, self.worker.name, older_than=SWEEP_AGE)
            except Exception:
                logger.exception("worker duties pass failed")

    def _write_ended(self) -> None:
        """Write the ended runs the worker asked for. The request is taken before writing, so
        one made during the write (runs that ended meanwhile) is honoured by another write
        right after; it is kept when the write did not happen (the lock held, or an error)."""
        self._write = False
        written = False
        try:
            written = save_ended(self.runtime, self.worker.name)
        finally:
            if not written:
                self._write = True

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
        self._wake.set()
        for thread in (self, self._heart):
            if thread.is_alive():
                thread.join(timeout=5)


def save_ended(
    runtime: Runtime,
    holder: str,
    final: bool = False,
    older_than: float = 0.0,
    until_empty: bool = True,
) -> bool:
    """Write every ended run waiting in Redis (for over ``older_than`` seconds) to SQL, 100 per
    transaction, one worker at a time (a SQLite database takes one writer at a time); False
    when another worker holds the lock.

    A run that cannot be written (database down) stays in Redis's unsaved set, and the sweep
    writes it later. The lock only spares duplicate work (writing a run twice is an upsert), so
    it is short lived: a worker that died holding it delays the others by two seconds at most.
    A stopping worker writes without it. ``until_empty``: see :meth:`Runtime.save_unsaved`.
    """
    lock = f"{runtime.settings.key_prefix}:lock:persist"
    if not final and not runtime.connection.set(lock, holder, nx=True, px=2_000):
        return False
    try:
        runtime.save_unsaved(older_than=older_than, until_empty=until_empty)
    except RedisError:
        raise
    except Exception:
        logger.exception("writing ended runs to SQL failed; they wait in Redis")
    finally:
        if not final:
            runtime.connection.delete(lock)
    return True


def reap_dead_workers(runtime: Runtime) -> WatchReport:
    """Give back the claimed jobs of every ezgraph worker whose liveness key expired.

    A step whose workers died holding it more than ``MAX_RECOVERIES`` times (run alone after
    the first, so the deaths are its own) is not given back: it fails, and so does its run.
    """
    prefix = runtime.settings.key_prefix
    connection = runtime.connection
    report = WatchReport()
    for raw in connection.smembers(f"{prefix}:workers"):
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        if connection.exists(f"{prefix}:alive:{name}"):
            continue
        requeued, failed = runtime.book.call("requeue_claimed", "", name, MAX_RECOVERIES)
        if requeued:
            logger.warning("worker %s is gone: requeued %d steps", name, len(requeued))
        report.requeued.extend(job_id.decode() for job_id in requeued)
        for job_id in (raw_id.decode() for raw_id in failed):
            try:
                run_id = Job.fetch(job_id, connection=connection).kwargs["run_id"]
            except (NoSuchJobError, KeyError, DeserializationError):
                report.failed.append(job_id)  # not an ezgraph step: RQ's failed registry has it
                continue
            step = job_id[len(run_id) + 1 :]
            fail_lost_step(runtime, run_id, step, job_id, name, DIED, report)
    return report


PICKLE_START = pickle.PROTO  # the first byte of a pickle of protocol 2 or later


def job_data(data: bytes) -> bytes:
    """A job's pickled call, compressed or not: RQ compresses it, ezgraph leaves small ones
    as they are, and RQ's own ``Job.restore`` reads both (it tries to decompress first)."""
    if data[:1] == PICKLE_START:
        # A pickle of protocol 2 or later: never a zlib stream, whose first byte is one of
        # 0x08, 0x18, ... 0x78 (so no error is raised and caught for every step).
        return data
    try:
        return zlib.decompress(data)
    except zlib.error:
        return data


def serve(
    runtime: Runtime,
    nodes: Sequence[str] | None = None,
    burst: bool = False,
    log_level: str = "INFO",
    with_scheduler: bool = True,
    claim_batch: int | None = None,
) -> bool:
    """Run a fast worker on ``nodes``, in that order of priority (default: every node of the
    graph, sink first: later steps of runs under way before the first steps of new runs)."""
    graph = runtime.graph()
    queues = [Queue(node, connection=runtime.connection) for node in (nodes or graph.sink_first())]
    worker = FastWorker(
        queues, connection=runtime.connection, runtime=runtime, claim_batch=claim_batch
    )
    return worker.work(burst=burst, logging_level=log_level, with_scheduler=with_scheduler)
