"""The public face: submit runs, read their status, cancel or retry them, count queues.

``GraphOrchestrator`` holds a :class:`Runtime`; the module-level :func:`submit` and
:func:`status` build one from the environment for each call (the seed's API).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from redis import Redis
from redis.client import PubSub
from redis.exceptions import RedisError
from rq.command import PUBSUB_CHANNEL_TEMPLATE, send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError

from .context import Runtime, StepInput
from .errors import ConnectionFailed, InvalidRunOperation, PayloadError, RunNotFound, UsageError
from .model.graph import Graph
from .model.records import RunRecord, RunStatus
from .settings import Settings

WAIT_RECHECK = 0.5  # seconds: wait() reads the status this often even without a message


class GraphOrchestrator:
    """Submit runs of a graph and read them back, from Redis while live and from SQL after."""

    def __init__(
        self,
        settings: Settings | None = None,
        connection: Redis | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        if runtime is None:
            runtime = Runtime(settings or Settings.from_env(), connection)
        self.runtime = runtime
        self.settings = runtime.settings
        self._pubsub: PubSub | None = None  # kept between waits (see _subscription)
        self._pubsub_lock = threading.Lock()

    @property
    def graph(self) -> Graph:
        """The graph of the configured modules package."""
        return self.runtime.graph()

    def submit(
        self,
        start_module: str,
        data: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        **fields: Any,
    ) -> str:
        """Start a run at ``start_module`` with ``data`` and ``fields`` as its state; return its id.

        Raises:
            UsageError: for an unknown start module.
            PayloadError: for a payload that is not a JSON object or is over the size limit.
        """
        graph = self.graph
        if start_module not in graph.connections:
            known = ", ".join(graph.nodes)
            raise UsageError(f"unknown start module {start_module!r} (graph nodes: {known})")
        payload = {**(data or {}), **fields}
        input_json = _payload_json(payload, self.settings.max_payload_bytes)
        run_id = _check_run_id(run_id or uuid.uuid4().hex)
        job = self.runtime.prepare_job(graph, run_id, start_module, StepInput(state=payload))
        reachable = {start_module, *graph.descendants(start_module)}
        joins = {
            node: sum(1 for p in graph.predecessors(node) if p in reachable)
            for node in reachable
            if graph.is_join(node) and node != start_module
        }
        joins = {node: left for node, left in joins.items() if left < len(graph.predecessors(node))}
        with _redis_errors(self.runtime):
            created = self.runtime.book.submit(
                run_id, start_module, graph.package, graph.to_json(), input_json, joins, job
            )
        if not created:
            raise UsageError(f"run id {run_id!r} exists already")
        return run_id

    def status(self, run_id: str) -> dict[str, Any]:
        """The run as ``{"run_id", "status", "nodes", "result", "error", ...}``.

        Raises:
            UsageError: for a malformed run id.
            RunNotFound: when neither Redis nor the database knows the run.
        """
        return self.get_run(run_id).to_status()

    def get_run(self, run_id: str) -> RunRecord:
        """The run's record: from Redis while it is there, else from SQL."""
        _check_run_id(run_id)
        with _redis_errors(self.runtime):
            record = self.runtime.read_run(run_id)
        if record is None:
            record = self.runtime.store.load_run(run_id)
        if record is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        return record

    def wait(self, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Block until the run reaches a terminal state (or ``timeout``); return its status.

        It wakes on the message the run's scripts publish when it stops or ends, so it returns
        as soon as that happens, and reads the status every :data:`WAIT_RECHECK` seconds too.
        """
        deadline = time.monotonic() + timeout
        _check_run_id(run_id)
        channel = self.runtime.book.stopped_channel(run_id)
        with _redis_errors(self.runtime), self._subscription(channel) as pubsub:
            while True:
                current = self.status(run_id)
                left = deadline - time.monotonic()
                if RunStatus(current["status"]).terminal or left <= 0:
                    return current
                pubsub.get_message(timeout=min(left, WAIT_RECHECK))

    def _new_pubsub(self) -> PubSub:
        pubsub: PubSub = self.runtime.connection.pubsub()  # type: ignore[no-untyped-call]
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
            deadline = time.monotonic() + WAIT_RECHECK
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
        _check_run_id(run_id)
        book = self.runtime.book
        with _redis_errors(self.runtime):
            outcome = book.fail(run_id, "", "run canceled", run_status="canceled")
            if outcome.status in ("gone", "refused"):
                current = self.get_run(run_id).status
                raise InvalidRunOperation(f"run {run_id} is already {current}: nothing to cancel")
            ended = outcome.run_ended
            record = self.runtime.read_run(run_id)
            running = [
                f"{run_id}-{step.step}"
                for step in (record.steps if record else ())
                if step.status == "running"
            ]
            stopping = self._stop_jobs(running)
            if stopping:
                self._wait_for_jobs(stopping, stop_wait)
                # Record the steps whose job was stopped: they will never report.
                ended = book.fail(run_id, "", "run canceled", run_status="canceled").run_ended
        if ended:
            self.runtime.save_runs([run_id])
        return self.status(run_id)

    def _stop_jobs(self, job_ids: list[str]) -> list[str]:
        """Send RQ's stop command for each job; return those whose worker listens for commands.

        Workers that do not (ezgraph's own) let the step finish, so there is nothing to wait for.
        """
        connection = self.runtime.connection
        listened = []
        for job_id in job_ids:
            worker = connection.hget(f"rq:job:{job_id}", "worker_name")
            if not worker:
                continue
            name = worker.decode() if isinstance(worker, bytes) else str(worker)
            channel = PUBSUB_CHANNEL_TEMPLATE % name
            with suppress(InvalidJobOperation, NoSuchJobError):  # it ended meanwhile
                send_stop_job_command(connection, job_id)
                if connection.pubsub_numsub(channel)[0][1]:
                    listened.append(job_id)
        return listened

    def _wait_for_jobs(self, job_ids: list[str], timeout: float) -> None:
        """Wait until none of the RQ jobs ``job_ids`` is started, or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        connection = self.runtime.connection
        while time.monotonic() < deadline:
            pipe = connection.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hget(f"rq:job:{job_id}", "status")
            if all(status != b"started" for status in pipe.execute()):
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
        _check_run_id(run_id)
        with _redis_errors(self.runtime):
            resumed = self.runtime.book.resume(run_id)
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
        return self.status(run_id)

    def list_queues(self) -> dict[str, int]:
        """Jobs waiting in each node's queue, e.g. ``{'intent_validator': 0, ...}``."""
        nodes = self.graph.nodes
        with _redis_errors(self.runtime):
            pipe = self.runtime.connection.pipeline(transaction=False)
            for node in nodes:
                pipe.llen(f"rq:queue:{node}")
            counts = pipe.execute()
        return {node: int(count) for node, count in zip(nodes, counts, strict=True)}


def submit(start_module: str, **fields: Any) -> str:
    """Submit a run with settings from the environment; return its id (the seed's API)."""
    return GraphOrchestrator().submit(start_module, **fields)


def status(run_id: str) -> dict[str, Any]:
    """A run's status with settings from the environment (the seed's API)."""
    return GraphOrchestrator().status(run_id)


def _check_run_id(run_id: str) -> str:
    """Return ``run_id`` when it is well-formed (what :meth:`GraphOrchestrator.submit` accepts).

    Raises:
        UsageError: for an empty id, or one holding anything but letters, digits, '-' and '_'.
    """
    if not run_id.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"run id {run_id!r} may only hold letters, digits, '-' and '_'")
    return run_id


def _payload_json(payload: Mapping[str, Any], limit: int) -> str:
    try:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(text.encode())  # a lone surrogate (bytes that were not UTF-8) fails here
    except (TypeError, ValueError, RecursionError) as error:
        raise PayloadError(f"payload is not JSON-serializable: {error}") from None
    if size > limit:
        raise PayloadError(
            f"payload is {size} bytes, over the {limit}-byte limit (EZGRAPH_MAX_PAYLOAD)"
        )
    return text


@contextmanager
def _redis_errors(runtime: Runtime) -> Iterator[None]:
    """Turn a Redis failure mid-operation into one line naming the server."""
    try:
        yield
    except RedisError as error:
        kwargs = runtime.connection.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        raise ConnectionFailed(f"Redis at {where} failed: {error}") from error
