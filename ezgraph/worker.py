"""ezgraph's workers: RQ workers that also keep runs moving to SQL, and the seed's ModuleWorker.

Stock ``rq worker <node>`` processes serve ezgraph steps as they are; these add a background
duty: ended runs whose write to SQL failed (database down) are written as soon as it answers.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from typing import Any

from rq import Queue
from rq.worker import SimpleWorker

from .runtime import Runtime
from .settings import Settings
from .step import install_runtime

logger = logging.getLogger(__name__)


class Maintenance(threading.Thread):
    """Every ``interval`` seconds, write the ended runs still waiting in Redis to SQL."""

    def __init__(self, runtime: Runtime, interval: float = 1.0) -> None:
        super().__init__(name="ezgraph-maintenance", daemon=True)
        self.runtime = runtime
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        """Loop until :meth:`stop`; a failing pass is logged, never fatal."""
        while not self.stopped.wait(self.interval):
            self.tick()

    def tick(self) -> None:
        """One pass; runs ended over a second ago are left to their own worker first."""
        try:
            self.runtime.save_unsaved(older_than=1.0)
        except Exception:  # keep the worker alive whatever the database or Redis does
            logger.exception("maintenance pass failed")

    def stop(self) -> None:
        """Ask the loop to end."""
        self.stopped.set()


class EzgraphWorker(SimpleWorker):
    """An RQ SimpleWorker that runs steps in-process with an installed runtime."""

    def __init__(self, queues: Sequence[Queue], *args: Any, runtime: Runtime, **kwargs: Any):
        kwargs.setdefault("connection", runtime.connection)
        super().__init__(queues, *args, **kwargs)
        self.runtime = runtime


def run_worker(
    runtime: Runtime,
    nodes: Sequence[str] | None = None,
    burst: bool = False,
    with_scheduler: bool = True,
    log_level: str = "INFO",
) -> bool:
    """Serve ``nodes`` (default: every node of the graph) until stopped, or until idle in burst.

    Returns whether any job was performed.
    """
    graph = runtime.graph()
    queues = [Queue(node, connection=runtime.connection) for node in (nodes or graph.nodes)]
    install_runtime(runtime)
    maintenance = Maintenance(runtime)
    maintenance.start()
    try:
        worker = EzgraphWorker(queues, runtime=runtime)
        worked = worker.work(burst=burst, with_scheduler=with_scheduler, logging_level=log_level)
    finally:
        maintenance.stop()
        install_runtime(None)
    # A burst ends when the queues are empty; runs it ended are written before it returns.
    maintenance.tick()
    return bool(worked)


class ModuleWorker:
    """The seed's way to write a module: subclass, implement ``process(self, data)``, ``start()``.

    The node is ``name`` (default: the class name in snake_case); it must be a node of the
    graph, and the package points at the class, e.g. ``MODULES = {"x": "modules.x:XWorker"}``.
    """

    name: str = ""
    # Lets the graph loader recognise a ModuleWorker class without importing this module.
    _ezgraph_module_worker = True

    @classmethod
    def node_name(cls) -> str:
        """The node this class serves."""
        return cls.name or re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()

    def process(self, data: dict[str, Any]) -> Any:
        """Compute this module's output from the run's state."""
        raise NotImplementedError

    def start(self, burst: bool = False, settings: Settings | None = None) -> bool:
        """Serve this node's queue with this instance's ``process`` until stopped (or idle)."""
        runtime = Runtime(settings or Settings.from_env())
        runtime.override(self.node_name(), self.process)
        return run_worker(runtime, [self.node_name()], burst=burst)
