"""What a process works with: settings, the Redis connection, runs in Redis and SQL, graphs.

Build one :class:`Context` and pass it down (a stock RQ worker's process gets one per
connection: :class:`~ezgraph.workers.stock.StockProcess`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from redis import Redis

from .connection import connect
from .errors import UsageError
from .model.graph import Graph, StepFunction, load_graph
from .model.step_job import StepJob
from .rq_compat import JobFactory
from .settings import TUNING, Settings, Tuning
from .state.keys import Keys
from .state.redis_io import ScriptRunner
from .state.runs import RedisRuns

if TYPE_CHECKING:  # imported where first used: see Context.store and Context.tracing
    from .state.notifications import Notifications
    from .state.sql import Store
    from .tracing import Tracing


class Context:
    """Settings, connections and graphs for one process (or one worker in it)."""

    def __init__(
        self, settings: Settings, connection: Redis | None = None, tuning: Tuning = TUNING
    ) -> None:
        self.settings = settings
        self.tuning = tuning
        self.connection = connection if connection is not None else connect(settings)
        self.keys = Keys(settings.key_prefix)
        self.scripts = ScriptRunner(self.connection, settings.key_prefix, tuning)
        self.runs = RedisRuns(self.connection, self.keys, self.scripts, tuning.client_patience)
        self.jobs = JobFactory(settings, tuning)
        # None unless EZGRAPH_TRACING is on: then each step makes its span (ezgraph.tracing).
        self.tracing: Tracing | None = None if settings.tracing == "off" else self._tracing()
        self._store: Store | None = None
        self._notifications: Notifications | None = None
        self._graphs: dict[str, Graph] = {}
        self._run_graphs: dict[tuple[str, str], Graph] = {}  # by package and version
        self._functions: dict[tuple[str, str], StepFunction] = {}

    @property
    def store(self) -> Store:
        """The SQL store (its engine is created on first use)."""
        if self._store is None:
            # SQLAlchemy is imported here, not with this module: a stock worker's forked
            # work-horse imports ezgraph for every job, and needs SQL only if its run ends.
            from .state.sql import Store

            self._store = Store(self.settings.database_url, self.tuning)
        return self._store

    def _tracing(self) -> Tracing:
        """The tracing of this process's runs (the optional ``tracing`` extra)."""
        try:
            from .tracing import Tracing  # OpenTelemetry: imported only when tracing is on
        except ImportError as error:
            raise UsageError(
                f"EZGRAPH_TRACING={self.settings.tracing} needs OpenTelemetry ({error}):"
                " pip install 'ezgraph[tracing]'"
            ) from None
        return Tracing.for_settings(self.settings, self.connection, self.keys)

    @property
    def notifications(self) -> Notifications:
        """The runs' notifications in SQL (FLOW_ORCHESTRATION_URL), made on first use."""
        if self._notifications is None:
            from .state.notifications import Notifications  # SQLAlchemy: see store

            self._notifications = Notifications(self.store)
        return self._notifications

    def graph(self, package: str | None = None) -> Graph:
        """The validated graph of ``package`` (default: the settings' modules package), cached."""
        key = package or self.settings.modules_package or ""
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = load_graph(key or None)
        return graph

    def graph_of(self, job: StepJob) -> Graph:
        """The graph a step runs on: this process's, or, for a run that started on another
        version of it (a deploy while the run was live), that run's shape with this process's
        functions (read from the run once per version)."""
        own = self.graph(job.package)
        version = job.graph_version
        if version is None or version == own.version:
            return own
        graph = self._run_graphs.get((own.package, version))
        if graph is None:
            shape = self.connection.hget(self.keys.run(job.run_id), "graph")
            if not isinstance(shape, bytes):
                return own  # the run is gone: its step will record nothing
            graph = self._run_graphs[(own.package, version)] = own.for_run(json.loads(shape))
        return graph

    def override(self, node: str, function: StepFunction, package: str | None = None) -> None:
        """Run ``function`` for ``node`` in this context instead of the graph's function."""
        self._functions[(package or self.graph().package, node)] = function

    def function(self, graph: Graph, node: str) -> StepFunction:
        """The callable ``node`` runs, imported once."""
        key = (graph.package, node)
        function = self._functions.get(key)
        if function is None:
            function = self._functions[key] = graph.resolve(node)
        return function
