"""Commands about the graph itself: check, viz."""

from __future__ import annotations

import click

from ..model.graph import load_graph
from ..model.render import FORMATS, render
from .app import CliState, cli, pass_state


@cli.command()
@pass_state
def check(state: CliState) -> None:
    """Validate the graph and its modules; print the verdict."""
    graph = load_graph(state.settings.modules_package)
    edges = sum(len(s) for s in graph.connections.values())
    joins = [n for n in graph.nodes if graph.is_join(n)]
    click.echo(
        f"ok: {graph.package}: {len(graph.nodes)} nodes, {edges} edges"
        + (f", joins: {', '.join(joins)}" if joins else "")
    )


@cli.command()
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@pass_state
def viz(state: CliState, fmt: str) -> None:
    """Draw the graph as text, Mermaid or Graphviz dot."""
    click.echo(render(load_graph(state.settings.modules_package), fmt))
