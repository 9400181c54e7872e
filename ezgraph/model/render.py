"""The graph drawn as text, Mermaid or Graphviz DOT (``ezgraph viz``), bare or coloured by the
statuses of one run's steps (``ezgraph viz RUN_ID``, the dashboard's run page).

Pure: turning DOT into an image is :mod:`ezgraph.ops.drawing`'s (it runs Graphviz).
"""

from __future__ import annotations

from collections.abc import Mapping

from .graph import Graph

FORMATS = ("text", "mermaid", "dot")

# Fill and border of a node by its status ("pending": no step yet; "not run": the run ended
# before the node was reached). Chosen to read apart for the common colour-blindnesses too,
# and backed by the status written in every label.
COLOURS: dict[str, tuple[str, str]] = {
    "pending": ("#ffffff", "#8c959f"),
    "not run": ("#f6f8fa", "#afb8c1"),
    "queued": ("#eaeef2", "#57606a"),
    "running": ("#ddf4ff", "#0969da"),
    "waiting": ("#fff1e5", "#bc4c00"),
    "mapped": ("#fbefff", "#8250df"),
    "finished": ("#dafbe1", "#1a7f37"),
    "failed": ("#ffebe9", "#cf222e"),
    "skipped": ("#f6f8fa", "#afb8c1"),
    "canceled": ("#fff8c5", "#9a6700"),
}
MERMAID_CLASSES = {status: status.replace(" ", "_") for status in COLOURS}


def render(
    graph: Graph,
    fmt: str = "text",
    statuses: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """``graph`` in format ``fmt`` (one of :data:`FORMATS`); with ``statuses`` (node ->
    status), each node shows and is coloured by its status; ``labels`` add a line under a
    node's name (a map's progress)."""
    if fmt == "mermaid":
        return _mermaid(graph, statuses)
    if fmt == "dot":
        return to_dot(graph, statuses, labels)
    lines = []
    for node, successors in graph.connections.items():
        label = " (join)" if graph.is_join(node) else ""
        if statuses is not None:
            extra = f", {labels[node]}" if labels and node in labels else ""
            label += f" [{statuses.get(node, 'pending')}{extra}]"
        lines.append(f"{node}{label} -> {', '.join(successors) or '(end)'}")
    return "\n".join(lines)


def to_dot(
    graph: Graph,
    statuses: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """Graphviz DOT of ``graph``; with ``statuses``, filled boxes coloured by status."""
    lines = ["digraph ezgraph {"]
    if statuses is not None:
        lines += [
            "  rankdir=LR;",
            '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
            '  edge [color="#8c959f"];',
        ]
    for node, successors in graph.connections.items():
        if statuses is None:
            lines.append(f"  {node};")
        else:
            status = statuses.get(node, "pending")
            fill, border = COLOURS.get(status, COLOURS["pending"])
            extra = f"\\n{labels[node]}" if labels and node in labels else ""
            text = f"{node}\\n{status}{extra}"
            dashed = ', style="rounded,filled,dashed"' if status in ("pending", "skipped") else ""
            lines.append(
                f'  {node} [label="{text}", fillcolor="{fill}", color="{border}",'
                f' penwidth=2, tooltip="{node}: {status}"{dashed}];'
            )
        lines += [f"  {node} -> {successor};" for successor in successors]
    lines.append("}")
    return "\n".join(lines)


def _mermaid(graph: Graph, statuses: Mapping[str, str] | None) -> str:
    lines = ["graph TD"]
    for node, successors in graph.connections.items():
        lines += [f"    {node} --> {successor}" for successor in successors]
    if statuses is not None:
        for status, name in MERMAID_CLASSES.items():
            fill, border = COLOURS[status]
            lines.append(f"    classDef {name} fill:{fill},stroke:{border},stroke-width:2px")
        for node in graph.nodes:
            lines.append(f"    class {node} {MERMAID_CLASSES.get(statuses.get(node, 'pending'))}")
    return "\n".join(lines)
