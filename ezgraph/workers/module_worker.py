"""The seed's way to write a module: a :class:`ModuleWorker` subclass that serves its node.

class NovoModuloWorker(ModuleWorker):
    def __init__(self):
        super().__init__('novo_modulo')

    def process(self, data):
        return {"ok": True}

if __name__ == '__main__':
    NovoModuloWorker().start()
"""

from __future__ import annotations

import re
from typing import Any

from ..context import Context
from ..errors import GraphError
from ..settings import Settings
from .fast import serve


class ModuleWorker:
    """Subclass it, implement ``process(self, data)``, call ``start()``.

    The node is ``name`` (given to ``__init__``, or the class's ``name``, or else the class
    name in snake_case less a ``Worker`` suffix: ``IntentValidatorWorker`` serves
    ``intent_validator``); it must be a node of the graph. The graph runs the class's
    ``process`` for that node when ``modules/<node>.py`` holds the class, or when the package's
    ``MODULES`` points at it (``{"x": "modules.x:XWorker"}``).
    """

    name: str = ""
    # Lets the graph loader recognise a ModuleWorker class without importing this module.
    _ezgraph_module_worker = True

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            self.name = name

    @classmethod
    def default_node(cls) -> str:
        """The node a class serves when no name is given."""
        if cls.name:
            return cls.name
        base = cls.__name__.removesuffix("Worker") or cls.__name__
        return re.sub(r"(?<!^)(?=[A-Z])", "_", base).lower()

    def node_name(self) -> str:
        """The node this worker serves."""
        return self.name or self.default_node()

    def process(self, data: dict[str, Any]) -> Any:
        """Compute this module's output from the run's state."""
        raise NotImplementedError

    def start(self, burst: bool = False, settings: Settings | None = None) -> bool:
        """Serve this node's queue with this instance's ``process`` until stopped (or idle).

        Raises:
            GraphError: when the graph has no node of this worker's name.
        """
        context = Context(settings or Settings.from_env())
        node = self.node_name()
        if node not in context.graph().nodes:
            raise GraphError(
                f"{type(self).__name__} serves node {node!r}, which is not in GRAPH_CONNECTIONS"
                " (pass its name: super().__init__('node'))"
            )
        context.override(node, self.process)
        return serve(context, [node], burst=burst, replace_when_stuck=True)
