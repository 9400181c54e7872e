"""``ezgraph chaos``: the crash audit (see :mod:`ezgraph.chaos`)."""

from __future__ import annotations

import signal
import sys

import click

from ..chaos import CHAOS_GRAPH, Chaos
from ..context import Context
from .app import CliState, cli, interrupt, pass_state, seconds


@cli.command()
@click.option(
    "--runs", "-n", type=click.IntRange(1), default=1000, show_default=True, help="Runs to submit."
)
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="Worker processes.",
)
@click.option(
    "--every",
    callback=seconds(),
    default=5.0,
    show_default=True,
    help="Seconds between kills (mean).",
)
@click.option(
    "--jitter",
    callback=seconds(closed=True),
    default=2.0,
    show_default=True,
    help="Kill interval varies by ± this.",
)
@click.option(
    "--work-ms",
    callback=seconds(closed=True),
    default=20.0,
    show_default=True,
    help="Milliseconds each step works.",
)
@click.option(
    "--timeout",
    callback=seconds(),
    default=900.0,
    show_default=True,
    help="Give up after this long.",
)
@click.option(
    "--graph",
    "own_graph",
    is_flag=True,
    help="Audit the configured modules package instead of the built-in chaos graph.",
)
@pass_state
def chaos(
    state: CliState,
    runs: int,
    workers: int,
    every: float,
    jitter: float,
    work_ms: float,
    timeout: float,
    own_graph: bool,
) -> None:
    """Crash-audit: kill busy workers, count the damage.

    It SIGKILLs busy workers while runs flow, then counts what was lost or doubled.

    Exits 1 when a run was lost or failed, or a row or side effect was duplicated.
    """
    settings = state.settings
    if not own_graph:
        settings = settings.replace(modules_package=CHAOS_GRAPH)
    signal.signal(signal.SIGTERM, interrupt)  # as Ctrl-C: the audit stops its workers first
    audit = Chaos(
        Context(settings),
        workers=workers,
        every=every,
        jitter=jitter,
        work_ms=work_ms,
        timeout=timeout,
        log=lambda line: click.echo(line, err=True),
    )
    report = audit.run(runs)
    for line in report.lines():
        click.echo(line)
    if not report.clean:
        sys.exit(1)
