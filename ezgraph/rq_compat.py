"""RQ's storage, Python side: the one module that knows how RQ keeps jobs, queues and workers.

Step jobs are built here as RQ's ``Job.create(...).to_dict()`` would write them; job data is
decoded as ``Job.restore`` does; a failed job goes through RQ's own failure handling. The Lua
side is ``state/lua/lib/rq.lua``. ``tests/integration/test_rq_contract.py`` compares both with
what RQ itself writes for the same job, so the next RQ version is this module's work.

It writes what the installed RQ writes, 2.12 or 3.x (:data:`RQ_MAJOR`, chosen here once and
given to the Lua by :func:`lua_constants`): RQ 3 reads a worker's running jobs from its
executions set rather than ``current_job``, stops a job with ``stop-execution`` and names its
keys under ``RQ_KEY_PREFIX``.
"""

from __future__ import annotations

import base64
import itertools
import json
import pickle
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq import defaults as rq_defaults
from rq.command import PUBSUB_CHANNEL_TEMPLATE, send_command, send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.executions import Execution
from rq.job import Job, JobStatus, Retry
from rq.queue import Queue
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.scheduler import RQScheduler
from rq.timeouts import JobTimeoutException
from rq.version import VERSION as RQ_VERSION
from rq.worker import SimpleWorker

from .model.graph import Graph
from .model.step_job import StepJob
from .settings import Settings, Tuning
from .state.protocol import (
    JOIN_INPUT_FIELD,
    Claimed,
    MapItems,
    PlannedJob,
    as_text,
    join_input_spec,
)

RQ_MAJOR = int(RQ_VERSION.split(".", 1)[0])  # 2 or 3: the layout this layer writes
# RQ 3 names its keys under RQ_KEY_PREFIX, read from the environment as rq is imported (default
# 'rq'); RQ 2 under 'rq'.
RQ_PREFIX = f"{getattr(rq_defaults, 'RQ_KEY_PREFIX', 'rq')}:"
RQ_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
STEP_FUNCTION = "ezgraph.step.run_step"  # what every step job calls (pickled into it)
PICKLE_START = pickle.PROTO  # the first byte of a pickle of protocol 2 or later


def job_key(job_id: str) -> str:
    """A job's hash."""
    return f"{RQ_PREFIX}job:{job_id}"


def queue_key(queue: str) -> str:
    """A queue's list of job ids."""
    return f"{RQ_PREFIX}queue:{queue}"


def intermediate_key(queue: str) -> str:
    """Where a stock worker's dequeue holds a job before it starts it."""
    return f"{RQ_PREFIX}queue:{queue}:intermediate"


def worker_executions_key(worker: str) -> str:
    """RQ 3's set of a worker's running executions (``<job_id>:<execution_id>``)."""
    return f"{RQ_PREFIX}worker:{worker}:executions"


def lua_constants() -> str:
    """What ``lua/lib/rq.lua`` knows of the installed RQ, as Lua (ahead of every script)."""
    return f"local RQ_MAJOR = {RQ_MAJOR}\n"


_second: tuple[int, str] = (0, "")  # the last whole second formatted, and its text


def utcnow_iso() -> str:
    """Now, in the format RQ stores dates in. The part up to the second is formatted once a
    second (a step stamps several dates)."""
    global _second
    now = time.time()
    whole = int(now)
    cached = _second
    if cached[0] != whole:
        cached = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{cached[1]}.{int((now - whole) * 1_000_000):06d}Z"


class JobFactory:
    """Builds step jobs as RQ would write them: id ``<run>-<step>``, on the node's queue."""

    def __init__(self, settings: Settings, tuning: Tuning) -> None:
        self.settings = settings
        self.tuning = tuning
        self._node_fields: dict[tuple[str, str], tuple[Any, ...]] = {}

    def build(self, graph: Graph, job: StepJob) -> PlannedJob:
        """The RQ job of ``job`` (the hash Job.create(...).to_dict() writes, built directly:
        this runs for every successor of every step, and Job objects are slow to build)."""
        now_iso = utcnow_iso()
        fields: list[Any] = [
            "created_at", now_iso,
            "enqueued_at", now_iso,
            "data", self.data(job),
            "description", f"{job.step}{self.description_tail(graph, job)}",
            *self._fields_of_node(graph, job.node),
        ]  # fmt: skip
        if job.reads_join_input:
            spec = join_input_spec(
                job.run_id, graph.predecessors(job.node), graph.join_state_sources(job.node)
            )
            fields += [JOIN_INPUT_FIELD, spec]
        return PlannedJob(job.step, job.job_id, job.node, fields)

    def data(self, job: StepJob) -> bytes:
        """The job's ``data``: RQ's pickled call of the step function (compressed, as RQ
        does, when large)."""
        data = pickle.dumps(
            (STEP_FUNCTION, None, (), job.kwargs()), protocol=pickle.HIGHEST_PROTOCOL
        )
        if len(data) > self.tuning.compress_over:  # RQ reads both (Job.restore)
            data = zlib.compress(data)
        return data

    @staticmethod
    def description_tail(graph: Graph, job: StepJob) -> str:
        """What follows the step's name in its job's description."""
        return f" ({graph.functions[job.node]}) run {job.run_id}"

    def map_items(
        self, graph: Graph, node: str, token: str, count: int, instances: Iterator[StepJob]
    ) -> MapItems:
        """The jobs of a Map's ``count`` instances (in item order), as the run's map hash
        stages them (``run.create_map_chunk`` writes each job as :meth:`build` would)."""
        first = next(instances, None)
        if first is None:
            return MapItems("", node, token, 0, (), "", ())
        data = itertools.chain([self.data(first)], (self.data(job) for job in instances))
        return MapItems(
            first.run_id,
            node,
            token,
            count,
            self._fields_of_node(graph, node),
            self.description_tail(graph, first),
            data,
        )

    def _fields_of_node(self, graph: Graph, node: str) -> tuple[Any, ...]:
        """The hash fields every job of ``node`` shares (queue, policy, TTLs), built once."""
        cache_key = (graph.package, node)
        fields = self._node_fields.get(cache_key)
        if fields is None:
            settings = self.settings
            policy = graph.policy(
                node, settings.job_timeout, settings.retries, settings.retry_intervals
            )
            fields = (
                "origin", node,
                "timeout", policy.timeout,
                "result_ttl", settings.result_ttl,
                "failure_ttl", settings.result_ttl,
                "status", JobStatus.QUEUED.value,
            )  # fmt: skip
            if policy.retries > 0:
                retry = Retry(max=policy.retries, interval=list(policy.retry_intervals) or 0)
                fields += (
                    "retries_left", retry.max,
                    "retry_intervals", json.dumps(retry.intervals),
                    "meta", pickle.dumps({"retries": retry.max}, protocol=pickle.HIGHEST_PROTOCOL),
                )  # fmt: skip
            self._node_fields[cache_key] = fields
        return fields


def decode_call(data: bytes) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """A job's function name, args and kwargs from its data, compressed or not (RQ compresses,
    ezgraph leaves small ones as they are; RQ's own ``Job.restore`` reads both)."""
    if data[:1] != PICKLE_START:  # a pickle is never a zlib stream (first byte 0x08...0x78)
        with suppress(zlib.error):
            data = zlib.decompress(data)
    func_name, _instance, args, kwargs = pickle.loads(data)
    return func_name, tuple(args), dict(kwargs)


def encode_return_value(value: Any) -> str:
    """A return value as RQ's results stream holds it (its pickle, base64)."""
    return base64.b64encode(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).decode()


def raise_timeout(signum: int, frame: Any) -> None:
    """A SIGALRM handler raising RQ's own timeout exception, as RQ's death penalty does."""
    raise JobTimeoutException("Task exceeded maximum timeout value")


@dataclass(frozen=True)
class ClaimedJob:
    """What a step needs of an RQ job an ezgraph worker claimed (no Job object built)."""

    id: str
    queue: str
    retries_left: int | None
    meta: dict[str, Any]
    worker_name: str
    timeout: int
    result_ttl: int
    execution_id: str
    started: float
    data: bytes = b""
    join_input: list[Any] | None = None  # what the claim read for a join's job


def claimed_job(
    claimed: Claimed, worker: str, execution_id: str, default_timeout: int
) -> ClaimedJob:
    """What a claim read of a job, as the step needs it (RQ's defaults where a field is unset:
    a ``result_ttl`` of 500 s)."""
    return ClaimedJob(
        id=claimed.job_id.decode(),
        queue=claimed.queue.decode(),
        retries_left=None if claimed.retries_left is None else int(claimed.retries_left),
        meta=pickle.loads(claimed.meta) if claimed.meta else {},
        worker_name=worker,
        timeout=default_timeout if claimed.timeout is None else int(claimed.timeout),
        result_ttl=500 if claimed.result_ttl is None else int(claimed.result_ttl),
        execution_id=execution_id,
        started=time.time(),
        data=claimed.data or b"",
        join_input=claimed.join_input,
    )


def beat_worker(pipe: Any, worker: SimpleWorker, held: Sequence[ClaimedJob], ttl: float) -> None:
    """What an ezgraph worker's heartbeat refreshes in RQ's storage, as RQ's heartbeats do: its
    worker hash (and RQ 3's executions set), and its claimed jobs' executions, which ``rq info``
    would otherwise fail as abandoned once their score passed (and RQ 3 would read as ended).
    Nothing is created: a job finished meanwhile is left finished."""
    pipe.hset(worker.key, "last_heartbeat", utcnow_iso())
    pipe.expire(worker.key, worker.worker_ttl + 60)
    if RQ_MAJOR >= 3:
        pipe.expire(worker_executions_key(worker.name), worker.worker_ttl + 60)
    now = time.time()
    for job in held:
        member = f"{job.id}:{job.execution_id}"
        pipe.zadd(f"{RQ_PREFIX}wip:{job.queue}", {member: now + ttl}, xx=True)
        pipe.expire(f"{RQ_PREFIX}execution:{member}", int(ttl))
        pipe.zadd(f"{RQ_PREFIX}executions:{job.id}", {job.execution_id: now + ttl + 60}, xx=True)


def _execution(worker: SimpleWorker, job: ClaimedJob) -> Execution:
    """RQ's view of the execution a claim started (``rq.start_job`` in Lua)."""
    execution = Execution(
        job.execution_id, job.id, connection=worker.connection, worker_name=worker.name
    )
    execution.created_at = datetime.fromtimestamp(job.started, tz=UTC)
    return execution


def fail_job(
    worker: SimpleWorker, job: ClaimedJob, exc_string: str, failure_ttl: int | None = None
) -> None:
    """Hand a job that raised to RQ's own failure handling: a retry (queued again, or
    scheduled after its interval) or the failed registry, with its traceback, kept
    ``failure_ttl`` seconds if given (else the job's own); its execution ends there too (RQ 3
    takes it as an argument, RQ 2 from the worker)."""
    rq_job = Job.fetch(job.id, connection=worker.connection)
    if failure_ttl is not None:
        rq_job.failure_ttl = _at_most(rq_job.failure_ttl, failure_ttl)
    rq_job.ended_at = datetime.now(UTC)  # as the worker's handle_execution_ended
    execution = _execution(worker, job)
    queue = Queue(job.queue, connection=worker.connection)
    # Each branch calls the API of one RQ major: mypy, run against the other, is told so.
    if RQ_MAJOR >= 3:
        worker.handle_job_failure(  # type: ignore[call-arg]
            rq_job, queue, exc_string=exc_string, execution=execution
        )
    else:
        worker.execution = execution
        worker.handle_job_failure(rq_job, queue, exc_string=exc_string)
        worker.set_current_job_id(None)  # type: ignore[attr-defined]  # '' would read as a job


def expire_with_run(job: Job, settings: Settings) -> None:
    """Keep a job that a stock worker is about to finish or fail no longer than its run's keys
    (``run_ttl``): what RQ writes as it ends the job (its hash's expiry, its result, its
    registry entry) then expires as soon as the rest of its run."""
    job.result_ttl = _at_most(job.result_ttl, settings.run_ttl)
    job.failure_ttl = _at_most(job.failure_ttl, settings.run_ttl)


def _at_most(ttl: int | None, limit: int) -> int:
    """An RQ TTL (None: RQ's default; -1: for ever) made at most ``limit`` seconds."""
    return limit if ttl is None or ttl < 0 else min(ttl, limit)


def perform_job(worker: SimpleWorker, job: ClaimedJob) -> None:
    """Run a claimed job that is no ezgraph step the way a SimpleWorker runs it (which starts
    an execution of its own: the claim's ends first, by RQ's code)."""
    rq_job = Job.fetch(job.id, connection=worker.connection)
    queue = Queue(job.queue, connection=worker.connection)
    with worker.connection.pipeline() as pipe:
        _execution(worker, job).delete(job=rq_job, pipeline=pipe)
        pipe.execute()
    worker.execute_job(rq_job, queue)


def prune_registries(connection: Redis, queues: Sequence[str]) -> None:
    """Drop the entries whose time has passed from the registries of ended jobs of ``queues``
    (finished, failed, canceled; scored by expiry), as their ``cleanup`` does, in one round
    trip."""
    if not queues:
        return
    now = time.time()
    pipe = connection.pipeline(transaction=False)
    for queue in queues:
        for status in ("finished", "failed", "canceled"):
            pipe.zremrangebyscore(registry_key(queue, status), 0, now)
    pipe.execute()


def job_statuses(connection: Redis, job_ids: Sequence[str]) -> list[str | None]:
    """The RQ status of each job (None for a job that is gone), in one round trip."""
    if not job_ids:
        return []
    pipe = connection.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(job_key(job_id), "status")
    return [None if s is None else s.decode() for s in pipe.execute()]


def queue_lengths(connection: Redis, queues: Sequence[str]) -> list[int]:
    """How many jobs wait in each queue, in one round trip."""
    pipe = connection.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(queue_key(queue))
    return [int(n) for n in pipe.execute()]


def stop_job(connection: Redis, job_id: str) -> bool:
    """Send the installed RQ's stop command for a running job (RQ 3: ``stop-execution`` to each
    of its executions; RQ 2: ``stop-job``); True when its worker listens for commands (a forking
    worker kills the step; ezgraph's worker and a SimpleWorker let it finish)."""
    if RQ_MAJOR >= 3:
        return _stop_executions(connection, job_id)
    worker = connection.hget(job_key(job_id), "worker_name")
    if not worker:
        return False
    name = worker.decode() if isinstance(worker, bytes) else str(worker)
    with suppress(InvalidJobOperation, NoSuchJobError):  # it ended meanwhile
        send_stop_job_command(connection, job_id)
        return _listens(connection, name)
    return False


def _stop_executions(connection: Redis, job_id: str) -> bool:
    """RQ 3's stop command, as ``send_stop_execution_command`` sends it, to the worker of each
    live execution of ``job_id``."""
    listening = False
    for raw in connection.zrange(f"{RQ_PREFIX}executions:{job_id}", 0, -1):
        execution_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        worker = connection.hget(f"{RQ_PREFIX}execution:{job_id}:{execution_id}", "worker_name")
        if not worker:
            continue  # it ended meanwhile
        name = worker.decode() if isinstance(worker, bytes) else str(worker)
        payload = {"job_id": job_id, "execution_id": execution_id}
        send_command(connection, name, "stop-execution", **payload)
        listening = _listens(connection, name) or listening
    return listening


def _listens(connection: Redis, worker: str) -> bool:
    """Whether worker ``worker`` listens on its command channel."""
    return bool(connection.pubsub_numsub(PUBSUB_CHANNEL_TEMPLATE % worker)[0][1])


def run_id_of_job(connection: Redis, job_id: str) -> str | None:
    """The run of a step job (None for a job that is gone or no ezgraph step)."""
    data = connection.hget(job_key(job_id), "data")
    if not isinstance(data, bytes) or not data:
        return None
    try:
        func_name, _args, kwargs = decode_call(data)
    except Exception:
        return None
    return str(kwargs["run_id"]) if func_name == STEP_FUNCTION and "run_id" in kwargs else None


# -- Operators' reads: queues, registries, workers and schedulers, as RQ 2.x keeps them --------
# (the dashboard, the metrics, `ezgraph top` and `ezgraph diagnose`; read-only, one round trip
# each, nothing cleaned up, unlike RQ's own `count`, which prunes registries as it counts)

REGISTRIES = {  # a job's status -> RQ's registry of jobs in it ("queued" is the queue's list)
    "started": StartedJobRegistry,
    "finished": FinishedJobRegistry,
    "failed": FailedJobRegistry,
    "deferred": DeferredJobRegistry,
    "scheduled": ScheduledJobRegistry,
    "canceled": CanceledJobRegistry,
}
WORKER_FIELDS = ("queues", "state", "hostname", "pid", "current_job", "last_heartbeat", "birth")


@dataclass(frozen=True)
class WorkerInfo:
    """An RQ worker as its hash holds it; ``registered`` is False for a worker still in RQ's
    workers set whose hash expired (it died without saying so, and nobody cleaned up yet)."""

    name: str
    queues: tuple[str, ...]
    state: str
    hostname: str
    pid: int | None
    current_job: str | None
    last_heartbeat: str | None
    birth: str | None
    registered: bool = True


def registry_key(queue: str, status: str) -> str:
    """The key of RQ's registry of ``status`` jobs of ``queue`` (``queued``: the queue)."""
    if status == "queued":
        return queue_key(queue)
    return str(REGISTRIES[status].key_template.format(queue))


def queue_names(connection: Redis) -> list[str]:
    """Every queue RQ knows (its ``rq:queues`` set), sorted."""
    keys = connection.smembers(f"{RQ_PREFIX}queues")
    return sorted((as_text(key) or "").removeprefix(queue_key("")) for key in keys)


def job_counts(connection: Redis, queues: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per queue, how many jobs RQ holds in each status (``queued`` and every registry)."""
    statuses = ("queued", *REGISTRIES)
    pipe = connection.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(queue_key(queue))
        for status in REGISTRIES:
            pipe.zcard(registry_key(queue, status))
    replies = iter(pipe.execute())
    return {queue: {status: int(next(replies)) for status in statuses} for queue in queues}


def workers(connection: Redis) -> list[WorkerInfo]:
    """Every worker in RQ's workers set, with its hash (stock workers and ezgraph's alike)."""
    keys = sorted(as_text(key) or "" for key in connection.smembers(f"{RQ_PREFIX}workers"))
    pipe = connection.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(key, *WORKER_FIELDS)
    found = []
    for key, values in zip(keys, pipe.execute(), strict=True):
        queues, state, host, pid, job, beat, birth = (as_text(v) or "" for v in values)
        found.append(
            WorkerInfo(
                name=key.removeprefix(f"{RQ_PREFIX}worker:"),
                queues=tuple(q for q in queues.split(",") if q),
                state=state or "?",
                hostname=host,
                pid=int(pid) if pid.isdigit() else None,
                current_job=job or None,
                last_heartbeat=beat or None,
                birth=birth or None,
                registered=any(values),
            )
        )
    return found


def job_details(connection: Redis, job_ids: Sequence[str]) -> list[dict[str, str]]:
    """For each job, RQ's status, origin queue, worker and dates (empty for a job that is
    gone), in one round trip."""
    fields = ("status", "origin", "worker_name", "enqueued_at", "started_at", "ended_at")
    pipe = connection.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(job_key(job_id), *fields)
    return [
        {name: as_text(value) or "" for name, value in zip(fields, values, strict=True) if value}
        for values in pipe.execute()
    ]


def scheduled_times(connection: Redis, jobs: Sequence[tuple[str, str]]) -> list[float | None]:
    """When each (job id, queue) is due in RQ's scheduled registry (a Unix time; None: not
    scheduled), in one round trip."""
    pipe = connection.pipeline(transaction=False)
    for job_id, queue in jobs:
        pipe.zscore(registry_key(queue, "scheduled"), job_id)
    return [None if score is None else float(score) for score in pipe.execute()]


def schedulers_running(connection: Redis, queues: Sequence[str]) -> dict[str, bool]:
    """Which queues an RQ scheduler (``rq worker --with-scheduler``) holds the lock of."""
    pipe = connection.pipeline(transaction=False)
    for queue in queues:
        pipe.exists(RQScheduler.get_locking_key(queue))
    return {queue: bool(found) for queue, found in zip(queues, pipe.execute(), strict=True)}
