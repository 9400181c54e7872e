"""The ``ezgraph`` command line: submit, run, status, cancel, retry, queues, worker, check...

Every ezgraph error becomes one line on stderr: exit code 2 for usage, 1 for failures.
The commands live by topic in this package's modules; :func:`main` runs them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from ..errors import EzgraphError
from . import chaos, graph, ops, runs, schedules, server, workers
from .app import cli

__all__ = ["chaos", "cli", "graph", "main", "ops", "runs", "schedules", "server", "workers"]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI, turning ezgraph errors into one line and an exit code."""
    try:
        cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.exceptions.Abort:  # Ctrl-C (click turns KeyboardInterrupt into Abort)
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except EzgraphError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
