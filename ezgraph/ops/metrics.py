"""Prometheus metrics, computed on each scrape from SQL and Redis (``prometheus_client``).

A custom collector: nothing is counted in the workers, so any process that reaches Redis and
the database exports the same figures (``/metrics`` of ``ezgraph dashboard``, ``ezgraph
metrics --port N``). SQL gives the history (grouped counts and the duration histogram over the
indexes of migration 0002); Redis gives what is in flight and RQ's own queues and workers, in
the names rq-exporter uses (``rq_jobs``, ``rq_workers``).

Recoveries: Redis keeps, per step of a live run, how many times recovery put it back
(``recovered``); SQL does not keep it, so ``ezgraph_live_step_recoveries`` counts the live
runs' steps only, a gauge, not a total since the start.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from redis.exceptions import RedisError

from .. import rq_compat
from ..context import Context
from ..errors import EzgraphError
from ..state.history import DURATION_BUCKETS, History
from .system import queue_names, read_workers

logger = logging.getLogger(__name__)

RECOVERY_SCAN = 1_000  # live runs whose steps a scrape reads for their recoveries, oldest first
READ_CHUNK = 100  # runs per round trip


class EzgraphCollector(Collector):
    """Every ezgraph and RQ metric, read anew at each scrape."""

    def __init__(self, context: Context, nodes: tuple[str, ...] = ()) -> None:
        self.context = context
        self.nodes = nodes  # the queues listed first (the graph's nodes)

    def describe(self) -> list[Metric]:
        """Nothing up front: registering the collector must not read Redis or SQL."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The metrics; a source that fails is left out and its ``_up`` gauge is 0."""
        sql_up = GaugeMetricFamily(
            "ezgraph_database_up", "1 when the results database answered this scrape."
        )
        try:
            yield from self._from_sql()
            sql_up.add_metric([], 1)
        except EzgraphError as error:
            logger.warning("metrics: %s", error)
            sql_up.add_metric([], 0)
        yield sql_up
        redis_up = GaugeMetricFamily("ezgraph_redis_up", "1 when Redis answered this scrape.")
        try:
            yield from self._from_redis()
            redis_up.add_metric([], 1)
        except RedisError as error:
            logger.warning("metrics: Redis failed: %s", error)
            redis_up.add_metric([], 0)
        yield redis_up

    def _from_sql(self) -> Iterator[Metric]:
        history = History(self.context.store)
        runs = CounterMetricFamily(
            "ezgraph_runs",
            "Runs written to SQL, by start node and status.",
            labels=["start", "status"],
        )
        for (start, status), count in sorted(history.runs_by_start_and_status().items()):
            runs.add_metric([start, status], count)
        steps = CounterMetricFamily(
            "ezgraph_steps", "Steps written to SQL, by node and status.", labels=["node", "status"]
        )
        for (node, status), count in sorted(history.steps_by_node_and_status().items()):
            steps.add_metric([node, status], count)
        durations = HistogramMetricFamily(
            "ezgraph_step_duration_seconds",
            "Duration of the steps in SQL that started and ended, by node.",
            labels=["node"],
        )
        for node, histogram in sorted(history.step_durations().items()):
            buckets = [
                (_bound(bound), float(count))
                for bound, count in zip(DURATION_BUCKETS, histogram.buckets, strict=True)
            ]
            buckets.append(("+Inf", float(histogram.count)))
            durations.add_metric([node], buckets, sum_value=histogram.total)
        notifications = GaugeMetricFamily(
            "ezgraph_notifications",
            "Ended runs' notifications to FLOW_ORCHESTRATION_URL, by state.",
            labels=["state"],
        )
        for state, count in sorted(self.context.notifications.counts().items()):
            notifications.add_metric([state], count)
        yield from (runs, steps, durations, notifications)

    def _from_redis(self) -> Iterator[Metric]:
        context = self.context
        connection, keys = context.connection, context.keys
        yield _gauge(
            "ezgraph_live_runs", "Runs in flight in Redis.", connection.zcard(keys.live_runs)
        )
        yield _gauge(
            "ezgraph_runs_waiting_for_sql",
            "Ended runs waiting in Redis to be written to SQL.",
            context.runs.unsaved_count(),
        )
        queues = queue_names(context, self.nodes)
        counts = rq_compat.job_counts(connection, queues)
        depth = GaugeMetricFamily(
            "ezgraph_queue_depth", "Steps waiting in each node's queue.", labels=["node"]
        )
        jobs = GaugeMetricFamily(
            "rq_jobs", "RQ jobs by queue and status.", labels=["queue", "status"]
        )
        for queue in queues:
            depth.add_metric([queue], counts[queue]["queued"])
            for status, count in counts[queue].items():
                jobs.add_metric([queue, status], count)
        yield from (depth, jobs)
        yield from self._workers()
        yield self._recoveries()

    def _workers(self) -> Iterator[Metric]:
        workers = read_workers(self.context)
        by_state = GaugeMetricFamily(
            "ezgraph_workers", "Workers by kind (ezgraph, rq) and state (dead: not reaped yet).",
            labels=["kind", "state"],
        )  # fmt: skip
        for (kind, state), count in sorted(Counter((w.kind, w.state) for w in workers).items()):
            by_state.add_metric([kind, state], count)
        listed = GaugeMetricFamily(
            "rq_workers", "RQ workers (1 each), as rq-exporter names them.",
            labels=["name", "queues", "state"],
        )  # fmt: skip
        for worker in workers:
            listed.add_metric([worker.name, ",".join(worker.queues), worker.state], 1)
        yield from (by_state, listed)

    def _recoveries(self) -> Metric:
        runs = self.context.runs
        live = runs.live(limit=RECOVERY_SCAN)
        recovered: Counter[str] = Counter()
        for first in range(0, len(live), READ_CHUNK):
            for steps in runs.read_steps(live[first : first + READ_CHUNK]):
                for step, fields in steps.items():
                    if fields.get("recovered"):
                        recovered[_node_of(step)] += int(fields["recovered"])
        gauge = GaugeMetricFamily(
            "ezgraph_live_step_recoveries",
            "Times recovery put back a step of a run still in flight (its worker died, or it was"
            " lost from its queue), by node.",
            labels=["node"],
        )
        for node, count in sorted(recovered.items()):
            gauge.add_metric([node], count)
        return gauge


def registry_for(context: Context, nodes: tuple[str, ...] = ()) -> CollectorRegistry:
    """A registry holding only ezgraph's collector (no process metrics of this exporter)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EzgraphCollector(context, nodes))
    return registry


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def _bound(bound: float) -> str:
    """A bucket's bound as Prometheus writes it (``0.005``, ``1.0``)."""
    return str(float(bound))


def _node_of(step: str) -> str:
    """The node of a step name (``node`` or ``node-<i>`` for a mapped instance; node names are
    identifiers, so hold no ``-``)."""
    node, dash, index = step.rpartition("-")
    return node if dash and index.isdigit() else step
