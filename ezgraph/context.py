"""The runtime a process works in: settings, Redis, the run bookkeeping, the store, the graphs.

Also where step jobs are built (so every job of every run looks alike in RQ) and where ended
runs are handed over to SQL.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis
from rq.job import JobStatus, Retry

from .connection import connect
from .errors import ConnectionFailed
from .faults import crash_point
from .model.graph import Graph, StepFunction, load_graph
from .model.records import RunRecord, record_from_live
from .settings import Settings
from .state.runs import GATHER_FIELD, PreparedJob, RunBook, utcnow_iso
from .state.sql import Store

logger = logging.getLogger(__name__)

STEP_FUNCTION = "ezgraph.step.run_step"
# Job data up to this many bytes is stored uncompressed: compressing a small pickle took ~5 us
# (zlib's set-up) and saves nothing, and RQ reads uncompressed data as well (Job.restore).
COMPRESS_OVER = 1024


@dataclass(frozen=True)
class StepInput:
    """How a step job gets its input: the state itself, or gathered from Redis (joins).

    ``gathered``: what the fast worker's claim read for a gathering job (the replies
    :func:`~ezgraph.state.runs.gathered_from` takes); otherwise the step reads it as it starts.
    """

    state: dict[str, Any] | None = None
    gather: bool = False
    gathered: Sequence[Any] | None = None
    index: int | None = None
    item: Any = None
    key: str = "item"


class Runtime:
    """Settings, connections and graphs for one process; build one, pass it down."""

    def __init__(self, settings: Settings, connection: Redis | None = None) -> None:
        self.settings = settings
        self.connection = connection if connection is not None else connect(settings)
        self.book = RunBook(self.connection, settings.key_prefix)
        self._store: Store | None = None
        self._graphs: dict[str, Graph] = {}
        self._functions: dict[tuple[str, str], StepFunction] = {}
        self._job_fields: dict[tuple[str, str], tuple[Any, ...]] = {}

    @property
    def store(self) -> Store:
        """The SQL store (the engine is created on first use)."""
        if self._store is None:
            self._store = Store(self.settings.database_url)
        return self._store

    def graph(self, package: str | None = None) -> Graph:
        """The validated graph of ``package`` (default: the settings' modules package), cached."""
        key = package or self.settings.modules_package or ""
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = load_graph(key or None)
        return graph

    def override(self, node: str, function: StepFunction, package: str | None = None) -> None:
        """Run ``function`` for ``node`` in this process instead of the graph's function."""
        self._functions[(package or self.graph().package, node)] = function

    def function(self, graph: Graph, node: str) -> StepFunction:
        """The callable ``node`` runs, imported once per process."""
        key = (graph.package, node)
        function = self._functions.get(key)
        if function is None:
            function = self._functions[key] = graph.resolve(node)
        return function

    def prepare_job(
        self, graph: Graph, run_id: str, node: str, step_input: StepInput
    ) -> PreparedJob:
        """Build the RQ job of one step: id ``<run>-<step>``, on the queue named after the node."""
        step = node if step_input.index is None else f"{node}-{step_input.index}"
        kwargs: dict[str, Any] = {"run_id": run_id, "node": node, "package": graph.package}
        if step_input.gather:
            kwargs["gather"] = True
        else:
            kwargs["state"] = step_input.state
        if step_input.index is not None:
            kwargs.update(index=step_input.index, item=step_input.item, key=step_input.key)
        # The hash RQ's Job.create(...).to_dict() would write, built directly: this runs for
        # every successor of every step, and Job objects are slow to build.
        now_iso = utcnow_iso()
        data = pickle.dumps((STEP_FUNCTION, None, (), kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) > COMPRESS_OVER:
            data = zlib.compress(data)
        fields: list[Any] = [
            "created_at", now_iso,
            "enqueued_at", now_iso,
            "data", data,
            "description", f"{step} ({graph.functions[node]}) run {run_id}",
            *self._node_job_fields(graph, node),
        ]  # fmt: skip
        if step_input.gather:
            # What a claim by the fast worker reads for it (fast.lua), saving the step a round
            # trip; RQ and stock workers ignore the field.
            preds, states = graph.predecessors(node), graph.gathered_states(node)
            fields += [GATHER_FIELD, json.dumps({"run": run_id, "preds": preds, "states": states})]
        return PreparedJob(step, f"{run_id}-{step}", node, fields)

    def _node_job_fields(self, graph: Graph, node: str) -> tuple[Any, ...]:
        """The hash fields every job of ``node`` shares (its queue, policy and TTLs), built
        once per process."""
        key = (graph.package, node)
        fields = self._job_fields.get(key)
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
            self._job_fields[key] = fields
        return fields

    def read_run(self, run_id: str) -> RunRecord | None:
        """A live run from Redis (with RQ's view of its queued steps), or None."""
        live = self.book.read(run_id)
        if live is None:
            return None
        queued = [
            (step, fields["job"])
            for step, fields in live.steps.items()
            if fields.get("status") == "queued" and fields.get("job")
        ]
        job_statuses: dict[str, str] = {}
        if queued:
            pipe = self.connection.pipeline(transaction=False)
            for _, job_id in queued:
                pipe.hget(f"rq:job:{job_id}", "status")
            for (step, _), status in zip(queued, pipe.execute(), strict=True):
                if status is not None:
                    job_statuses[step] = status.decode()
        return record_from_live(live, job_statuses)

    def save_runs(self, run_ids: Sequence[str]) -> list[str]:
        """Write ended runs to SQL in one transaction and mark them saved; returns the saved ids.

        When the database is down the runs stay in Redis's unsaved set and the next call
        (any worker's maintenance, or ``ezgraph persist``) writes them: delayed, never lost.
        """
        records = []
        written = []  # run id, the end written (a retry may change it while this writes)
        gone = []
        for run_id, live in zip(run_ids, self.book.read_many(run_ids), strict=True):
            if live is None:
                gone.append((run_id, ""))  # expired from Redis: nothing left to write
            elif ended := live.header.get("ended_at"):
                records.append(record_from_live(live, encoded=True))
                written.append((run_id, ended))
        self.book.mark_saved(gone, self.settings.run_ttl)
        if not records:
            return []
        crash_point(self.connection, self.settings.key_prefix, "before_persist", "run")
        try:
            self.store.save_runs(records)
        except ConnectionFailed as error:
            logger.warning("runs kept in Redis until the database answers: %s", error)
            return []
        self.book.mark_saved(written, self.settings.run_ttl)
        return [record.run_id for record in records]

    def save_unsaved(
        self, older_than: float = 0.0, batch: int = 100, until_empty: bool = True
    ) -> int:
        """Persist the ended runs waiting in Redis (for over ``older_than`` seconds), ``batch``
        per transaction, until none is left; returns how many were written.

        ``until_empty=False`` writes only the runs waiting when called: runs that end meanwhile
        wait for the next call instead of being chased a few per transaction. The follower
        (``persist --follow``) writes so, in a quarter less CPU per run; an ezgraph worker's
        background writer keeps writing until empty, which measured 12% more throughput for
        the worker (benchmarks/NOTES.md).
        """
        total = 0
        # The runs waiting now are the oldest ones: counted, not cut off at this machine's
        # time, which a worker's clock may be ahead of (their scores are the workers' times).
        left = math.inf if until_empty else self.book.unsaved_count()
        while left > 0:
            ids = self.book.unsaved(limit=int(min(batch, left)), older_than=older_than)
            if not ids:
                return total
            saved = self.save_runs(ids)
            total += len(saved)
            if len(saved) < len(ids):
                return total
            left -= len(ids)
        return total
