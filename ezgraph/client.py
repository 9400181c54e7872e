"""The public face: submit runs, read their status, cancel or retry them, count queues.

``GraphOrchestrator`` holds a :class:`~ezgraph.context.Context`; the module-level
:func:`submit` and :func:`status` (the seed's API) use one per process and settings, read from
the environment (:func:`shared`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from redis import Redis
from redis.client import PubSub
from redis.exceptions import RedisError

from . import rq_compat, submission
from .completion import resume_waiting, sweep_stopped
from .context import Context
from .errors import (
    ConnectionFailed,
    EzgraphError,
    InvalidRunOperation,
    PayloadError,
    RunNotFound,
    SubmitInterrupted,
    UsageError,
)
from .events import read_events
from .faults import crash_point
from .handover import RunWriter
from .model.graph import Graph
from .model.payload import to_json
from .model.records import RunRecord, RunStatus
from .model.step_job import job_id
from .settings import ENV_VARS, Settings
from .state.live import record_from_live
from .state.protocol import Signal
from .state.redis_io import out_of_memory
from .submission import check_run_id

logger = logging.getLogger(__name__)


class GraphOrchestrator:
    """Submit runs of a graph and read them back, from Redis while live and from SQL after."""

    def __init__(
        self,
        settings: Settings | None = None,
        connection: Redis | None = None,
        context: Context | None = None,
    ) -> None:
        if context is None:
            context = Context(settings or Settings.from_env(), connection)
        self.context = context
        self.settings = context.settings
        self._pubsub: PubSub | None = None  # kept between waits (see _subscription)
        self._pubsub_lock = threading.Lock()

    @property
    def graph(self) -> Graph:
        """The graph of the configured modules package."""
        return self.context.graph()

    def submit(
        self,
        start_module: str,
        data: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        *,
        idempotency_key: str | None = None,
        deadline: float | None = None,
        max_steps: int | None = None,
        **fields: Any,
    ) -> str:
        """Start a run at ``start_module`` with ``data`` and ``fields`` as its state; return its id.

        With ``idempotency_key``, the run is created once per key: a later call with the same
        key (from any process, while the run is live and after, from SQL) returns the first
        run's id and creates nothing; its payload is not looked at. A keyed call reads the
        database as well as Redis.

        ``deadline``: seconds the run may take; still going then, it fails with
        ``DeadlineExceeded`` (within a second: the watchdog's pass), its queued steps canceled
        and its running ones stopped where RQ can. ``max_steps``: steps the run may start;
        one more fails it with ``StepBudgetExceeded``. Both default to the graph's
        ``DEADLINE`` and ``MAX_STEPS``. ``run_id``, ``idempotency_key``, ``deadline`` and
        ``max_steps`` are never payload fields: a field of one of these names goes in ``data``.

        Raises:
            UsageError: for an unknown start module, a malformed run id or key, a run id that
                exists already, a deadline that is not seconds above 0, a ``max_steps`` below 1.
            PayloadError: for a payload that is not a JSON object or is over the size limit.
        """
        if data is not None and not isinstance(data, Mapping):
            raise PayloadError(f"payload must be a JSON object, got {type(data).__name__}")
        payload = {**(data or {}), **fields}
        batch = submission.prepare(
            self.context,
            start_module,
            [payload],
            [run_id or None],
            [idempotency_key],
            label=lambda n: "payload",
            deadline=deadline,
            max_steps=max_steps,
        )
        with _redis_errors(self.context):
            (run_ids,) = submission.send(self.context, batch)
        return run_ids[0]

    def submit_many(
        self,
        start_module: str,
        payloads: Iterable[Mapping[str, Any]],
        *,
        idempotency_keys: Sequence[str] | None = None,
        deadline: float | None = None,
        max_steps: int | None = None,
    ) -> list[str]:
        """Start one run per payload at ``start_module``; return their ids, in order.

        Every payload (and key) is checked before any run is submitted, so a bad one submits
        nothing; then the runs go in chunks, one Redis call per chunk (``Tuning.submit_chunk``
        runs). ``idempotency_keys``, one per payload, make each run once-only as
        :meth:`submit`'s ``idempotency_key`` does; ``deadline`` and ``max_steps`` apply to
        each run as in :meth:`submit`.

        Raises:
            UsageError: for an unknown start module or a malformed key, before anything is sent.
            PayloadError: for a bad payload, named by its index (``payloads[3]``), likewise.
            SubmitInterrupted: when Redis (or, with keys, the database) failed part-way: its
                ``run_ids`` are the runs of the first payloads, submitted; its ``unsure`` the
                runs of the next ones, whose calls were in flight; the rest were not submitted.
        """
        payloads = list(payloads)
        if idempotency_keys is not None and len(idempotency_keys) != len(payloads):
            raise UsageError(
                f"{len(idempotency_keys)} idempotency keys for {len(payloads)} payloads"
            )
        batch = submission.prepare(
            self.context,
            start_module,
            payloads,
            keys=idempotency_keys,
            label=lambda n: f"payloads[{n}]",
            deadline=deadline,
            max_steps=max_steps,
        )
        submitted: list[str] = []
        try:
            with _redis_errors(self.context):
                for run_ids in submission.send(self.context, batch):
                    submitted += run_ids
        except ConnectionFailed as error:
            # The calls in flight when Redis failed (two chunks at most) may have run.
            unsure = [
                r.run_id for r in batch.runs[len(submitted) :][: submission.in_flight(self.context)]
            ]
            raise SubmitInterrupted(
                f"{error}; of {len(payloads)} runs, the first {len(submitted)} were submitted,"
                f" the {len(unsure)} after them may have been (ezgraph status tells once Redis"
                " answers), the rest were not",
                submitted,
                unsure,
            ) from error
        return submitted

    def status(self, run_id: str) -> dict[str, Any]:
        """The run as ``{"run_id", "status", "nodes", "result", "error", ...}``.

        Raises:
            UsageError: for a malformed run id.
            RunNotFound: when neither Redis nor the database knows the run.
        """
        return self.get_run(run_id).to_status()

    def get_run(self, run_id: str) -> RunRecord:
        """The run's record: from Redis while it is there, else from SQL."""
        check_run_id(run_id)
        with _redis_errors(self.context):
            record = self._read_live(run_id)
        if record is None:
            record = self.context.store.load_run(run_id)
        if record is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        return record

    def _read_live(self, run_id: str) -> RunRecord | None:
        """A live run from Redis, with RQ's view of its queued steps (running or not), or None."""
        live = self.context.runs.read(run_id)
        if live is None:
            return None
        queued = [
            (step, fields["job"])
            for step, fields in live.steps.items()
            if fields.get("status") == "queued" and fields.get("job")
        ]
        statuses = rq_compat.job_statuses(self.context.connection, [job for _, job in queued])
        running = {
            step: status for (step, _), status in zip(queued, statuses, strict=True) if status
        }
        return record_from_live(live, running)

    def events(
        self, run_id: str, follow: bool = False, timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """The run's events from its first: what its steps reported with ``progress()``
        (``{"type": "progress", "step", "done", "total", "message", "at", "id"}``) and
        ``emit()``, and its steps' starts and ends (``{"type": "step", "step", "status",
        "at"}``); from Redis while the run is there, from SQL after. ``follow``: then the new
        ones as they come, until the run ends (or ``timeout`` seconds).

        Raises:
            UsageError: for a malformed run id.
            RunNotFound: when neither Redis nor the database knows the run.
        """
        check_run_id(run_id)
        with _redis_errors(self.context):
            yield from read_events(self.context, run_id, follow, timeout)

    def wait(self, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Block until the run reaches a terminal state (or ``timeout``); return its status.

        It wakes on the message the run's scripts publish when it stops or ends, so it returns
        as soon as that happens, and reads the status every ``Tuning.wait_recheck`` seconds too.
        """
        deadline = time.monotonic() + timeout
        check_run_id(run_id)
        channel = self.context.keys.stopped(run_id)
        with _redis_errors(self.context), self._subscription(channel) as pubsub:
            while True:
                current = self.status(run_id)
                left = deadline - time.monotonic()
                if RunStatus(current["status"]).terminal or left <= 0:
                    return current
                pubsub.get_message(timeout=min(left, self.context.tuning.wait_recheck))

    def _new_pubsub(self) -> PubSub:
        pubsub: PubSub = self.context.connection.pubsub()  # type: ignore[no-untyped-call]
        return pubsub

    @contextmanager
    def _subscription(self, channel: str) -> Iterator[PubSub]:
        """A pub/sub connection subscribed to ``channel`` (confirmed by Redis, so nothing
        published after this returns is missed). One connection is kept for the orchestrator's
        waits; a wait while another runs in a thread gets a connection of its own."""
        own = self._pubsub_lock.acquire(blocking=False)
        if own and self._pubsub is None:
            self._pubsub = self._new_pubsub()
        pubsub = self._pubsub if own and self._pubsub else self._new_pubsub()
        try:
            pubsub.subscribe(channel)
            wanted = (channel, channel.encode())
            deadline = time.monotonic() + self.context.tuning.wait_recheck
            while (left := deadline - time.monotonic()) > 0:
                message = pubsub.get_message(timeout=left)
                if message and message["type"] == "subscribe" and message["channel"] in wanted:
                    break
            yield pubsub
        except BaseException:
            pubsub.close()  # its state is unknown: the next wait starts afresh
            if own:
                self._pubsub = None
            raise
        else:
            if own:
                pubsub.unsubscribe(channel)  # type: ignore[no-untyped-call]
            else:
                pubsub.close()
        finally:
            if own:
                self._pubsub_lock.release()

    def cancel(self, run_id: str, stop_wait: float = 2.0) -> dict[str, Any]:
        """Cancel a run and return its status after.

        Steps still queued are canceled in RQ; running steps are sent RQ's stop command (a
        forking worker kills the step; one that cannot, such as a SimpleWorker or ezgraph's own,
        lets it finish, and its successors are never created). The run ends ``canceled`` once
        nothing of it runs; ``stop_wait`` is how long to wait for stopped steps to end before
        returning. Canceling a run that is canceled but not yet ended stops its steps again.

        Raises:
            UsageError: for a malformed run id.
            RunNotFound: for an unknown run.
            InvalidRunOperation: when the run is already finished, failed or canceled.
        """
        check_run_id(run_id)
        runs = self.context.runs
        with _redis_errors(self.context):
            outcome = runs.cancel(run_id, "run canceled")
            if outcome.status in ("gone", "refused"):
                current = self.get_run(run_id).status
                raise InvalidRunOperation(f"run {run_id} is already {current}: nothing to cancel")
            ended = outcome.run_ended
            if not ended:  # a wide run's jobs: swept a chunk per call
                swept: list[str] = []
                sweep_stopped(self.context, run_id, swept.append)
                ended = bool(swept)
            record = self._read_live(run_id)
            running = [
                job_id(run_id, step.step)
                for step in (record.steps if record else ())
                if step.status == "running"
            ]
            stopping = [job for job in running if rq_compat.stop_job(self.context.connection, job)]
            if stopping:
                self._wait_for_jobs(stopping, stop_wait)
                # Record the steps whose job was stopped: they will never report.
                ended = runs.cancel(run_id, "run canceled").run_ended
        if ended:
            RunWriter(self.context, f"client-{os.getpid()}").write_runs([run_id])
        return self.status(run_id)

    def _wait_for_jobs(self, job_ids: list[str], timeout: float) -> None:
        """Wait until none of the RQ jobs ``job_ids`` is started, or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            statuses = rq_compat.job_statuses(self.context.connection, job_ids)
            if all(status != "started" for status in statuses):
                return
            time.sleep(0.05)

    def retry(self, run_id: str) -> dict[str, Any]:
        """Resume a failed run from its failed steps; return its status after.

        Failed steps, the steps canceled because of the failure, and steps that finished after
        it (whose successors were never created) run again, each as its own RQ job requeued
        with its stored input; other finished steps keep their outputs. The run is written to
        SQL again when it ends (one row per run).

        Raises:
            UsageError: for a malformed run id.
            RunNotFound: for an unknown run.
            InvalidRunOperation: when the run is not failed, still has steps running, or is
                no longer in Redis.
        """
        check_run_id(run_id)
        with _redis_errors(self.context):
            resumed = self.context.runs.resume(run_id)
        if resumed.status == "gone":
            current = self.get_run(run_id).status
            if current != RunStatus.FAILED:
                raise InvalidRunOperation(
                    f"run {run_id} is {current}: only a failed run can be retried"
                )
            # Not this process's EZGRAPH_RUN_TTL: the run's writer may have had another.
            raise InvalidRunOperation(
                f"run {run_id} can no longer be retried: its state left Redis, EZGRAPH_RUN_TTL"
                " seconds after it was written to SQL"
            )
        if resumed.status == "status":  # named as `ezgraph status` names it (running, ...)
            raise InvalidRunOperation(
                f"run {run_id} is {self.status(run_id)['status']}: only a failed run can be retried"
            )
        if resumed.status == "running":
            raise InvalidRunOperation(
                f"run {run_id} failed but still has steps running: retry once they have ended"
            )
        if resumed.status == "job":
            step, job_status = resumed.details
            raise InvalidRunOperation(
                f"run {run_id} cannot be retried: the RQ job of step {step!r} is {job_status}"
            )
        if resumed.status == "empty":
            raise InvalidRunOperation(f"run {run_id} has no failed step to retry")
        if not resumed.details:  # a wide run: its steps are requeued a chunk per call
            with _redis_errors(self.context):
                sweep_stopped(self.context, run_id, lambda _: None)
        return self.status(run_id)

    def signal(self, run_id: str, name: str, data: Any = None) -> dict[str, Any]:
        """Send signal ``name`` with ``data`` (any JSON value) to a run; return its status after.

        The signal is kept in the run's mailbox first, so the step that waits for it
        (``ezgraph.Wait(name)``) goes on whether it waits already or comes to wait later. It
        is resumed here at once (or, if this process cannot, by a worker's watchdog within
        seconds); its successors receive its output plus ``{name: data}``.

        Raises:
            UsageError: for a malformed run id, or a name that is not an identifier.
            PayloadError: for data that is not JSON, or too big.
            RunNotFound: for an unknown run.
            InvalidRunOperation: when the run has ended (or stopped), or already got a signal
                named ``name`` (a signal is sent once).
        """
        check_run_id(run_id)
        if not isinstance(name, str) or not name.isidentifier():
            raise UsageError(f"signal name must be an identifier, not {name!r}")
        body = to_json(data, f"signal {name!r}: data", self.settings.max_payload_bytes)
        context = self.context
        with _redis_errors(context):
            sent = Signal(run_id, name, body, context.tuning.grace)
            status, detail = context.runs.signal(sent)
        if status == "gone":
            current = self.get_run(run_id).status  # RunNotFound for an unknown run
            raise InvalidRunOperation(f"run {run_id} is {current}: signal {name!r} not sent")
        if status == "ended":
            raise InvalidRunOperation(f"run {run_id} is {detail}: signal {name!r} not sent")
        if status == "duplicate":
            raise InvalidRunOperation(
                f"run {run_id} already got signal {name!r}: each name is sent once"
            )
        if detail:  # a step waits for it: resume it now (the watchdog does, should this die)
            crash_point(context.connection, context.keys, "after_signal", detail)
            try:
                with _redis_errors(context):
                    what, _ = resume_waiting(context, run_id, detail, self._run_ended)
            except EzgraphError as error:  # e.g. this process cannot load the graph
                logger.info("run %s: step %s left to the watchdog: %s", run_id, detail, error)
            else:
                if what == "resumed":
                    context.runs.unwatch_wait(run_id, detail)
        return self.status(run_id)

    def _run_ended(self, run_id: str) -> None:
        """A call of this client ended run ``run_id``: write it to SQL now."""
        RunWriter(self.context, f"client-{os.getpid()}").write_runs([run_id])

    def list_queues(self) -> dict[str, int]:
        """Jobs waiting in each node's queue, e.g. ``{'intent_validator': 0, ...}``."""
        nodes = self.graph.nodes
        with _redis_errors(self.context):
            counts = rq_compat.queue_lengths(self.context.connection, nodes)
        return dict(zip(nodes, counts, strict=True))


_shared: dict[Settings, GraphOrchestrator] = {}  # this process's, by settings (see shared())
_shared_pid = os.getpid()
_shared_lock = threading.Lock()
_settings_by_env: dict[tuple[str | None, ...], Settings] = {}  # Settings.from_env() by ENV_VARS
SHARED_MAX = 8  # orchestrators kept at most (each holds a Redis connection pool)


def shared(settings: Settings | None = None) -> GraphOrchestrator:
    """The orchestrator this process keeps for ``settings`` (default: from the environment).

    Built once per process and settings, so that :func:`submit` and :func:`status` cost what
    a reused :class:`GraphOrchestrator` does; a forked child builds its own (a connection must
    not be shared across a fork).
    """
    global _shared_pid
    # The environment is read into Settings once per distinct value of its variables: reading
    # it costs about as much as a submission.
    seen = tuple(os.environ.get(name) for name in ENV_VARS) if settings is None else ()
    with _shared_lock:
        if _shared_pid != os.getpid():
            _shared.clear()  # the parent's: leave its connections alone
            _shared_pid = os.getpid()
        if settings is None:
            settings = _settings_by_env.pop(seen, None) or Settings.from_env()
            _settings_by_env[seen] = settings  # the last used last
            if len(_settings_by_env) > SHARED_MAX:
                del _settings_by_env[next(iter(_settings_by_env))]
        orchestrator = _shared.pop(settings, None)
        if orchestrator is None:
            if len(_shared) >= SHARED_MAX:
                oldest = _shared.pop(next(iter(_shared)))
                oldest.context.connection.connection_pool.disconnect()
            orchestrator = GraphOrchestrator(settings)
        _shared[settings] = orchestrator  # the last used last
    return orchestrator


def submit(
    start_module: str,
    data: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    deadline: float | None = None,
    max_steps: int | None = None,
    **fields: Any,
) -> str:
    """Submit a run with settings from the environment; return its id (the seed's API).

    As :meth:`GraphOrchestrator.submit`, on this process's orchestrator for those settings.
    """
    return shared().submit(
        start_module,
        data,
        idempotency_key=idempotency_key,
        deadline=deadline,
        max_steps=max_steps,
        **fields,
    )


def status(run_id: str) -> dict[str, Any]:
    """A run's status with settings from the environment (the seed's API)."""
    return shared().status(run_id)


@contextmanager
def _redis_errors(context: Context) -> Iterator[None]:
    """Turn a Redis failure mid-operation into one line naming the server."""
    try:
        yield
    except RedisError as error:
        kwargs = context.connection.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        if out_of_memory(error):
            raise ConnectionFailed(
                f"Redis at {where} is out of memory (maxmemory): nothing was written; free"
                " memory or raise maxmemory, then try again"
            ) from error
        raise ConnectionFailed(f"Redis at {where} failed: {error}") from error


def stranded_runs(context: Context, graph: Graph) -> dict[str, list[tuple[str, list[str]]]]:
    """The live runs ``graph`` would strand if its workers replaced the running ones, by the
    version of the graph they started on: each run with the nodes it still needs that
    ``graph`` lacks (a run finishes on its own graph's shape, but only with nodes the workers
    have)."""
    stranded: dict[str, list[tuple[str, list[str]]]] = {}
    run_ids = context.runs.live()
    for first in range(0, len(run_ids), context.tuning.watch_read_chunk):
        chunk = run_ids[first : first + context.tuning.watch_read_chunk]
        for live in context.runs.read_many(chunk):
            version = live.header.get("version") if live else None
            if live is None or version is None or version == graph.version:
                continue
            ended = {"finished", "skipped", "failed", "canceled"}
            needed = [
                node
                for node in json.loads(live.header["graph"])["succ"]
                if node not in graph.connections
                and live.steps.get(node, {}).get("status") not in ended
            ]
            if needed:
                stranded.setdefault(version, []).append((live.run_id, needed))
    return stranded
