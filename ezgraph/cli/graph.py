"""Commands about the graph itself: check, viz."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..client import stranded_runs
from ..connection import check_eviction
from ..errors import ConnectionFailed, UsageError
from ..model.graph import load_graph
from ..model.render import FORMATS, render
from ..ops.checks import reach
from ..ops.drawing import IMAGE_FORMATS, draw
from ..ops.run_view import view_run
from .app import CliState, cli, pass_state


@cli.command()
@click.option(
    "--live",
    is_flag=True,
    help="Also list the live runs this graph would strand (nodes they need that it lacks).",
)
@pass_state
def check(state: CliState, live: bool) -> None:
    """Validate the graph and its modules.

    Also names the graph's starts (its STARTS, else its nodes with no predecessor), the
    nodes no start reaches and the joins a start reaches only in part; with --live, the live
    runs this graph would strand. Exits 2 when the graph is invalid, 1 when it would strand
    runs, 0 otherwise.
    """
    graph = load_graph(state.settings.modules_package)
    edges = sum(len(s) for s in graph.connections.values())
    joins = [n for n in graph.nodes if graph.is_join(n)]
    click.echo(
        f"ok: {graph.package}: {len(graph.nodes)} nodes, {edges} edges"
        + (f", joins: {', '.join(joins)}" if joins else "")
        + f" (version {graph.version})"
    )
    found = reach(graph)
    kind = "STARTS" if found.declared else "no predecessor"
    click.echo(f"starts ({kind}): {', '.join(found.starts)}")
    if found.unreachable:
        click.echo(f"warning: no start reaches {', '.join(found.unreachable)}: they never run")
    for note in found.partial_joins:
        click.echo(f"note: {note}")
    if state.settings.redis_url is not None:  # a configured Redis (the embedded one is safe)
        try:
            click.echo(f"redis: maxmemory-policy {check_eviction(state.context.connection)}")
        except ConnectionFailed as error:
            click.echo(f"warning: Redis not checked: {error}")
    if live:
        stranded = stranded_runs(state.context, graph)
        for version, runs in stranded.items():
            click.echo(
                f"{len(runs)} live runs started on graph {version} would be stranded by this"
                f" graph (version {graph.version}):"
            )
            for run_id, nodes in runs:
                click.echo(f"  {run_id}: {', '.join(nodes)}")
        if stranded:
            sys.exit(1)


@cli.command()
@click.argument("run_id", required=False)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write an image (.svg or .png, drawn by Graphviz) or the text to this file.",
)
@pass_state
def viz(state: CliState, run_id: str | None, fmt: str, output: Path | None) -> None:
    """Draw the graph, or one run's progress on it.

    As text, Mermaid or Graphviz DOT; with RUN_ID, each node shows (and is coloured by) the
    status of that run's step. --output graph.svg or graph.png draws it with Graphviz.
    """
    if run_id is not None:
        view = view_run(state.orchestrator, run_id, with_rq=False)
        text, dot = view.drawing(fmt), view.drawing("dot")
    else:
        graph = load_graph(state.settings.modules_package)
        text, dot = render(graph, fmt), render(graph, "dot")
    if output is None:
        click.echo(text)
        return
    suffix = output.suffix.lower().lstrip(".")
    if suffix in IMAGE_FORMATS:
        data = draw(dot, suffix)
    elif suffix in ("txt", "dot", "gv", "mmd", "mermaid", ""):
        data = (text + "\n").encode()
    else:
        raise UsageError(
            f"--output {output}: name a .svg or .png file (or .dot, .mmd, .txt for the text)"
        )
    try:
        output.write_bytes(data)
    except OSError as error:
        raise UsageError(f"--output {output}: {error.strerror or error}") from None
    click.echo(f"wrote {output} ({len(data):,} bytes)", err=True)
