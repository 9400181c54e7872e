"""``ezgraph chaos``: the crash audit (see :mod:`ezgraph.chaos`)."""

from __future__ import annotations

import signal
import sys

import click

from ..chaos import CHAOS_GRAPH, NEMESES, Chaos
from ..errors import UsageError
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
    help="Seconds from a fault's recovery to the next fault (mean).",
)
@click.option(
    "--jitter",
    callback=seconds(closed=True),
    default=2.0,
    show_default=True,
    help="The interval between faults varies by ± this.",
)
@click.option(
    "--nemesis",
    type=click.Choice([*NEMESES, "all"]),
    default="kill",
    show_default=True,
    help="The fault to strike with; all: each in turn, on its share of the runs.",
)
@click.option(
    "--hold",
    type=float,
    callback=lambda ctx, param, value: None if value is None else seconds()(ctx, param, value),
    default=None,
    help="How long a pause, stall, Redis restart or database hang lasts [default: 15, 8, 3, 8 s].",
)
@click.option(
    "--faults",
    type=click.IntRange(1),
    default=None,
    help="Strike at most this many times per nemesis [default: while its runs flow].",
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
    nemesis: str,
    hold: float | None,
    faults: int | None,
    work_ms: float,
    timeout: float,
    own_graph: bool,
) -> None:
    """Fault audit: strike workers, Redis, SQL; count the harm.

    While runs flow it strikes with a nemesis, one fault at a time, --every seconds after the
    last one's work moved again (at most --faults times per nemesis): kill (SIGKILL a busy
    worker), pause (SIGSTOP a busy worker for --hold s), stall-redis (SIGSTOP Redis),
    restart-redis (SIGKILL Redis, start it again on its append-only file), hang-db (lock
    ezgraph's tables); all: each in turn. The Redis nemeses strike at a private server the
    audit starts, never at yours. Then it counts, per nemesis, what was lost, stuck, failed
    or doubled, and how long the work each fault held took to move again.

    Exits 1 when a run was lost, stuck or failed, or a row or side effect was duplicated.
    """
    settings = state.settings
    if not own_graph:
        settings = settings.replace(modules_package=CHAOS_GRAPH)
    signal.signal(signal.SIGTERM, interrupt)  # as Ctrl-C: the audit stops its workers first
    nemeses = [NEMESES[name](hold) for name in (NEMESES if nemesis == "all" else [nemesis])]
    for refusal in filter(None, (n.refusal(settings.database_url) for n in nemeses)):
        raise UsageError(refusal)
    audit = Chaos(
        settings,
        nemeses,
        workers=workers,
        every=every,
        jitter=jitter,
        work_ms=work_ms,
        timeout=timeout,
        faults=faults,
        log=lambda line: click.echo(line, err=True),
    )
    report = audit.run(runs)
    for line in report.lines():
        click.echo(line)
    if not report.clean:
        sys.exit(1)
