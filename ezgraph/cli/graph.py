"""Commands about the graph itself: check, viz."""

from __future__ import annotations

import sys

import click

from ..client import stranded_runs
from ..model.graph import load_graph
from ..model.render import FORMATS, render
from .app import CliState, cli, pass_state


@cli.command()
@click.option(
    "--live",
    is_flag=True,
    help="Also list the live runs this graph would strand (nodes they need that it lacks).",
)
@pass_state
def check(state: CliState, live: bool) -> None:
    """Validate the graph and its modules; print the verdict."""
    graph = load_graph(state.settings.modules_package)
    edges = sum(len(s) for s in graph.connections.values())
    joins = [n for n in graph.nodes if graph.is_join(n)]
    click.echo(
        f"ok: {graph.package}: {len(graph.nodes)} nodes, {edges} edges"
        + (f", joins: {', '.join(joins)}" if joins else "")
        + f" (version {graph.version})"
    )
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
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@pass_state
def viz(state: CliState, fmt: str) -> None:
    """Draw the graph as text, Mermaid or Graphviz dot."""
    click.echo(render(load_graph(state.settings.modules_package), fmt))
