"""``ezgraph server``: the embedded Redis-compatible server used when no Redis is configured."""

from __future__ import annotations

import click

from .. import embedded
from ..connection import redis_url
from .app import CliState, cli, pass_state


@cli.group()
def server() -> None:
    """Manage the embedded Redis-compatible server.

    It is used when no Redis is configured.
    """


@server.command("url")
@pass_state
def server_url(state: CliState) -> None:
    """Print the Redis URL every command uses (starting the embedded server if needed)."""
    click.echo(redis_url(state.settings))


@server.command("start")
@pass_state
def server_start(state: CliState) -> None:
    """Start the embedded server (a no-op when it runs)."""
    click.echo(embedded.ensure_server(state.settings.home))


@server.command("stop")
@pass_state
def server_stop(state: CliState) -> None:
    """Stop the embedded server."""
    stopped = embedded.stop_server(state.settings.home)
    click.echo("stopped" if stopped else "not running")
