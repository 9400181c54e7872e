"""The graph drawn as text, Mermaid or Graphviz DOT (``ezgraph viz``)."""

from __future__ import annotations

from .graph import Graph

FORMATS = ("text", "mermaid", "dot")


def render(graph: Graph, fmt: str = "text") -> str:
    """``graph`` in format ``fmt`` (one of :data:`FORMATS`)."""
    lines: list[str] = []
    if fmt == "mermaid":
        lines.append("graph TD")
        for node, successors in graph.connections.items():
            lines += [f"    {node} --> {successor}" for successor in successors]
    elif fmt == "dot":
        lines.append("digraph ezgraph {")
        for node, successors in graph.connections.items():
            lines.append(f"  {node};")
            lines += [f"  {node} -> {successor};" for successor in successors]
        lines.append("}")
    else:
        for node, successors in graph.connections.items():
            label = " (join)" if graph.is_join(node) else ""
            lines.append(f"{node}{label} -> {', '.join(successors) or '(end)'}")
    return "\n".join(lines)
