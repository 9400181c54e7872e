"""Commands about schedules: add, list, remove, and run the scheduler."""

from __future__ import annotations

import json
import signal
import threading
import time

import click

from ..schedules import Schedules, loop, when
from .app import CliState, cli, pass_state
from .runs import parse_fields, payload_options


@cli.group()
def schedule() -> None:
    """Submit runs on a cron schedule (UTC): add, list, remove, run."""


@schedule.command("add")
@click.argument("name")
@click.argument("cron")
@click.argument("start")
@payload_options
@pass_state
def add(
    state: CliState, name: str, cron: str, start: str, data: str | None, fields: tuple[str, ...]
) -> None:
    """Submit a run at node START on every tick of CRON.

    CRON has 5 fields (minute hour day month weekday, UTC: "*/5 * * * *"), or 6 with seconds
    last. Each tick submits one run, however many schedulers run (every ezgraph worker, and
    ezgraph schedule run).
    """
    added = Schedules(state.context).add(name, cron, start, parse_fields(data, fields))
    first = when(added.next_tick(added.created_at))
    click.echo(f"schedule {name}: {cron} -> {start}, first run at {first} UTC")


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the schedules as JSON.")
@pass_state
def list_schedules(state: CliState, as_json: bool) -> None:
    """Show the schedules, their next tick and their last run."""
    schedules = Schedules(state.context)
    fired = schedules.fired()
    now = time.time()
    rows = []
    for found in schedules.all():
        tick, what = fired.get(found.name, (None, ""))
        rows.append(
            {
                "name": found.name,
                "cron": found.cron,
                "start": found.start,
                "data": found.data,
                "next": when(found.next_tick(now)),
                "last_tick": when(tick) if tick is not None else None,
                "last_run": what or None,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo("no schedules (ezgraph schedule add NAME CRON START)")
        return
    for row in rows:
        last = f"last {row['last_tick']} {row['last_run']}" if row["last_tick"] else "not run yet"
        click.echo(
            f"{row['name']:<20} {row['cron']:<16} {row['start']:<20} next {row['next']}  {last}"
        )


@schedule.command("remove")
@click.argument("name")
@pass_state
def remove(state: CliState, name: str) -> None:
    """Remove schedule NAME (the runs it submitted go on)."""
    Schedules(state.context).remove(name)
    click.echo(f"schedule {name} removed")


@schedule.command("run")
@click.option("--once", is_flag=True, help="Fire the due schedules once, then exit.")
@pass_state
def run_scheduler(state: CliState, once: bool) -> None:
    """Fire the schedules as they come due, until stopped.

    Every ezgraph worker does it already; run this beside stock rq workers. Several may run.
    """
    context = state.context
    if once:
        for name, tick, run_id in Schedules(context).fire_due():
            click.echo(f"{name}: tick {when(tick)} UTC: run {run_id}")
        return
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: stopped.set())
    click.echo("firing schedules as they come due (Ctrl-C stops)")
    loop(context, stopped)
    click.echo("stopped")
