"""Starting workers: :func:`run_worker` (what ``ezgraph worker`` runs) and the seed's ModuleWorker.

Stock ``rq worker <node>`` processes serve ezgraph steps as they are; ezgraph's own worker is
the :class:`~ezgraph.workers.fast.FastWorker`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..context import Runtime
from ..errors import GraphError
from ..settings import Settings
from .fast import serve


def run_worker(
    runtime: Runtime,
    nodes: Sequence[str] | None = None,
    burst: bool = False,
    with_scheduler: bool = True,
    log_level: str = "INFO",
) -> bool:
    """Serve ``nodes`` (default: every node of the graph) with a :class:`FastWorker` until
    stopped, or until its queues are empty in burst mode. Returns whether it performed a job."""
    return serve(runtime, nodes, burst=burst, log_level=log_level, with_scheduler=with_scheduler)


class ModuleWorker:
    """The seed's way to write a module: subclass, implement ``process(self, data)``, ``start()``.

    The node is ``name`` (default: the class name in snake_case, less a ``Worker`` suffix:
    ``IntentValidatorWorker`` serves ``intent_validator``); it must be a node of the graph, and
    the package points at the class, e.g. ``MODULES = {"x": "modules.x:XWorker"}``.
    """

    name: str = ""
    # Lets the graph loader recognise a ModuleWorker class without importing this module.
    _ezgraph_module_worker = True

    @classmethod
    def node_name(cls) -> str:
        """The node this class serves."""
        if cls.name:
            return cls.name
        base = cls.__name__.removesuffix("Worker") or cls.__name__
        return re.sub(r"(?<!^)(?=[A-Z])", "_", base).lower()

    def process(self, data: dict[str, Any]) -> Any:
        """Compute this module's output from the run's state."""
        raise NotImplementedError

    def start(self, burst: bool = False, settings: Settings | None = None) -> bool:
        """Serve this node's queue with this instance's ``process`` until stopped (or idle).

        Raises:
            GraphError: when the graph has no node of this class's name.
        """
        runtime = Runtime(settings or Settings.from_env())
        node = self.node_name()
        if node not in runtime.graph().nodes:
            raise GraphError(
                f"{type(self).__name__} serves node {node!r}, which is not in GRAPH_CONNECTIONS"
                " (set its name = ...)"
            )
        runtime.override(node, self.process)
        return run_worker(runtime, [node], burst=burst)
