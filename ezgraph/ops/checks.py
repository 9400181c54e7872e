"""What ``ezgraph check`` says beyond validity: which nodes the graph's starts reach.

A *start* is a node runs are submitted at. ``submit`` accepts any node, so a graph says which
are its starts with ``STARTS = ["a", ...]`` beside ``GRAPH_CONNECTIONS``; a graph that does not
has its sources (nodes with no predecessor) as starts. Then:

- a node no start reaches never runs (it can only be declared: dead code, or a missing edge);
- a join that a start reaches through only some of its predecessors runs, from that start,
  without the others (they count as skipped): said per start, as a note.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import GraphError
from ..model.graph import Graph


@dataclass(frozen=True)
class Reach:
    """The graph's starts (declared or not), the nodes none reaches, and the partial joins."""

    starts: tuple[str, ...]
    declared: bool
    unreachable: tuple[str, ...]
    partial_joins: tuple[str, ...]  # "join d from start a: never after x"


def declared_starts(graph: Graph) -> tuple[str, ...] | None:
    """The package's ``STARTS``, checked (None when it declares none).

    Raises:
        GraphError: for a STARTS that is not a list of the graph's nodes.
    """
    starts = getattr(importlib.import_module(graph.package), "STARTS", None)
    if starts is None:
        return None
    if isinstance(starts, str) or not isinstance(starts, (list, tuple)) or not starts:
        raise GraphError("STARTS must be a non-empty list of node names")
    for node in starts:
        if node not in graph.connections:
            raise GraphError(f"STARTS names {node!r}, which is not in GRAPH_CONNECTIONS")
    return tuple(starts)


def reach(graph: Graph) -> Reach:
    """Which nodes the starts reach (see the module doc)."""
    declared = declared_starts(graph)
    starts = declared or tuple(n for n in graph.nodes if not graph.predecessors(n))
    reached: set[str] = set()
    partial = []
    for start in starts:
        from_here = {start, *graph.descendants(start)}
        reached |= from_here
        for node in graph.join_arrivals_from(start):
            missing = [p for p in graph.predecessors(node) if p not in from_here]
            partial.append(f"join {node} from start {start}: runs without {', '.join(missing)}")
    unreachable = tuple(n for n in graph.nodes if n not in reached)
    return Reach(starts, declared is not None, unreachable, tuple(partial))
