"""Commands that keep runs moving: worker, reap, persist, init-db."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import click

from .. import handover, recovery
from ..errors import ConnectionFailed, EzgraphError, UsageError
from ..handover import RunWriter
from ..settings import redact_url
from ..state.sql import Store
from ..workers.fast import serve
from .app import CliState, cli, pass_state


@cli.command()
@click.argument("nodes", nargs=-1)
@click.option("--burst", is_flag=True, help="Exit when the queues are empty.")
@pass_state
def worker(state: CliState, nodes: tuple[str, ...], burst: bool) -> None:
    """Serve the queues of NODES (default: all nodes)."""
    context = state.context
    graph = context.graph()
    unknown = [node for node in nodes if node not in graph.connections]
    if unknown:
        raise UsageError(f"unknown node {unknown[0]!r} (graph nodes: {', '.join(graph.nodes)})")
    level = "INFO" if logging.getLogger().level <= logging.INFO else "WARNING"
    serve(context, list(nodes) or None, burst=burst, log_level=level, replace_when_stuck=True)


@cli.command("init-db")
@pass_state
def init_db(state: CliState) -> None:
    """Create or migrate ezgraph's tables.

    The first use of the database does it too.
    """
    Store(state.settings.database_url).create_schema()
    click.echo(f"schema ready in {redact_url(state.settings.database_url)}")


@cli.command()
@click.option(
    "--follow",
    is_flag=True,
    help="Keep writing runs as they end, in batches, until stopped; stock workers leave the "
    "writing to it meanwhile.",
)
@pass_state
def persist(state: CliState, follow: bool) -> None:
    """Write ended runs waiting in Redis to SQL.

    Now, or with --follow as they end; with FLOW_ORCHESTRATION_URL set, it also POSTs the
    runs' notifications that are due.
    """
    context = state.context
    try:
        context.store.create_schema()  # fails in one line when the database does not answer
    except ConnectionFailed as error:
        waiting = context.runs.unsaved_count()
        raise ConnectionFailed(f"{error} ({waiting} runs keep waiting in Redis)") from None
    name = f"persist-{os.getpid()}"
    if not follow:
        context.runs.restore_set_aside()  # the database may take them now
        count = RunWriter(context, name).write_unsaved()
        click.echo(f"{count} runs written")
        notifier = handover.start_notifier(context)
        if notifier is not None:  # and the notifications due: what fails waits in SQL
            notifier.stop()
        if refused := context.runs.set_aside():
            runs, them = ("1 run", "it") if len(refused) == 1 else (f"{len(refused)} runs", "them")
            reasons = "; ".join(f"{run_id}: {reason}" for run_id, reason in refused.items())
            raise EzgraphError(f"{runs} set aside, the database refused {them}: {reasons}")
        return
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: stopped.set())
    click.echo("writing ended runs to the database as they end (Ctrl-C stops)")
    handover.follow(context, stopped, name)
    click.echo("stopped")


@cli.command()
@click.option("--loop", is_flag=True, help="Keep watching, one pass a second, until interrupted.")
@pass_state
def reap(state: CliState, loop: bool) -> None:
    """Recover steps of dead workers and lost steps.

    Steps whose worker died, or that got lost from their queue; runs past their deadline.

    Every ezgraph worker does this each second; run it where only stock rq workers run. It
    looks at runs over 2 s old, and acts on a step once it has looked lost for 2 s: a single
    pass that finds one looks again 2 s later. With --loop, Ctrl-C ends it (exit 0).
    """
    context = state.context
    writer = RunWriter(context, f"reap-{os.getpid()}")

    def ended(run_id: str) -> None:
        writer.write_runs([run_id])

    try:
        while True:
            report = recovery.recover(context, ended)
            if loop:  # runs a work-horse left unsaved (the database was down): write them
                writer.take_turn(older_than=context.tuning.sweep_age)
            if report.suspected and not loop:
                time.sleep(context.tuning.grace + 0.1)  # the watchdog times by Redis's clock
                recovery.watch_runs(context, ended, report)
            if report.requeued or report.failed or report.past_deadline or not loop:
                late = len(report.past_deadline)
                click.echo(
                    f"requeued {len(report.requeued)} steps, failed {len(report.failed)} lost steps"
                    + (f", failed {late} runs past their deadline" if late else "")
                )
            if not loop:
                return
            time.sleep(1)
    except KeyboardInterrupt:
        if not loop:
            raise
