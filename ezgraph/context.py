"""What a process works with: settings, the Redis connection, runs in Redis and SQL, graphs.

Build one :class:`Context` and pass it down (a stock RQ worker's process gets one per
connection: :class:`~ezgraph.workers.stock.StockProcess`).
"""

from __future__ import annotations

from redis import Redis

from .connection import connect
from .model.graph import Graph, StepFunction, load_graph
from .rq_compat import JobFactory
from .settings import TUNING, Settings, Tuning
from .state.keys import Keys
from .state.redis_io import ScriptRunner
from .state.runs import RedisRuns
from .state.sql import Store


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
        self.runs = RedisRuns(self.connection, self.keys, self.scripts)
        self.jobs = JobFactory(settings, tuning)
        self._store: Store | None = None
        self._graphs: dict[str, Graph] = {}
        self._functions: dict[tuple[str, str], StepFunction] = {}

    @property
    def store(self) -> Store:
        """The SQL store (its engine is created on first use)."""
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
        """Run ``function`` for ``node`` in this context instead of the graph's function."""
        self._functions[(package or self.graph().package, node)] = function

    def function(self, graph: Graph, node: str) -> StepFunction:
        """The callable ``node`` runs, imported once."""
        key = (graph.package, node)
        function = self._functions.get(key)
        if function is None:
            function = self._functions[key] = graph.resolve(node)
        return function
