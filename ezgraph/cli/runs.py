"""Commands about runs: submit, run, status, cancel, retry, signal, queues."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, TypeVar

import click
from rich.console import Console

from ..client import GraphOrchestrator
from ..context import Context
from ..errors import ConnectionFailed, EzgraphError, SubmitInterrupted, UsageError
from ..model.payload import to_json
from ..model.records import RunStatus
from ..ops.run_view import RunView, view_run
from ..ops.system import read_workers, serving
from ..workers.fast import serve_until_ended
from . import live
from .app import CliState, cli, one_line, pass_state, seconds

F = TypeVar("F", bound=Callable[..., Any])

FIELD_HELP = "A field of the payload: key=value (a string) or key:=JSON (any JSON value)."


def parse_fields(data: str | None, fields: Sequence[str]) -> dict[str, Any]:
    """Build a payload from ``--data`` JSON and ``-f key=value`` / ``-f key:=json`` fields."""
    payload: dict[str, Any] = {}
    if data is not None:
        try:
            loaded = json.loads(data)
        except (ValueError, RecursionError) as error:  # also: nested too deep, too many digits
            raise UsageError(f"--data is not valid JSON: {one_line(error)}") from None
        if not isinstance(loaded, dict):
            raise UsageError("--data must be a JSON object")
        payload.update(loaded)
    for field in fields:
        if ":=" in field and field.index(":=") < field.find("=") + 1:
            key, _, raw = field.partition(":=")
            try:
                payload[key] = json.loads(raw)
            except (ValueError, RecursionError) as error:
                raise UsageError(f"-f {key}:= is not valid JSON: {one_line(error)}") from None
        elif "=" in field:
            key, _, value = field.partition("=")
            payload[key] = value
        else:
            raise UsageError(f"-f {field!r}: expected key=value or key:=JSON")
        if not key:
            raise UsageError(f"-f {field!r}: empty key")
    return payload


def payload_options(function: F) -> F:
    """The ``--data`` and ``-f`` options shared by submit and run."""
    function = click.option("--field", "-f", "fields", multiple=True, help=FIELD_HELP)(function)
    function = click.option("--data", help="The payload as a JSON object.")(function)
    return function


def print_outcome(outcome: dict[str, Any], waited: float | None = None) -> None:
    """The result on stdout, or one line on stderr: the run's error, or that it goes on."""
    run_id, current = outcome["run_id"], RunStatus(outcome["status"])
    if current == RunStatus.FINISHED:
        click.echo(json.dumps(outcome["result"], ensure_ascii=False, indent=2))
    elif current.terminal:
        click.echo(f"run {run_id} {current}: {one_line(outcome['error'])}", err=True)
    else:
        after = f" after {waited:g} s" if waited is not None else ""
        click.echo(
            f"run {run_id} is still {current}{after}; it goes on (ezgraph status {run_id})",
            err=True,
        )


@cli.command()
@click.argument("start")
@payload_options
@click.option(
    "--key",
    help="An idempotency key: the same key gives the same run, however often it is sent"
    " (with --jsonl, line N's key is KEY:N).",
)
@click.option(
    "--jsonl",
    type=click.File("rb"),
    help="Submit one run per line of this JSON-lines file (- for stdin); print their ids.",
)
@click.option(
    "--deadline",
    type=float,
    help="Seconds the run may take: still going then, it fails with DeadlineExceeded"
    " (default: the graph's DEADLINE).",
)
@click.option(
    "--max-steps",
    type=int,
    help="Steps the run may start: one more fails it (default: the graph's MAX_STEPS).",
)
@click.option("--wait", is_flag=True, help="Wait for the run to end and print its result.")
@click.option(
    "--timeout", callback=seconds(), default=60.0, show_default=True, help="Seconds --wait waits."
)
@pass_state
def submit(
    state: CliState,
    start: str,
    data: str | None,
    fields: tuple[str, ...],
    key: str | None,
    jsonl: BinaryIO | None,
    deadline: float | None,
    max_steps: int | None,
    wait: bool,
    timeout: float,
) -> None:
    """Submit a run at node START; print its id last.

    With --wait, show its nodes as they run (on stderr), then print its result. With --jsonl,
    every line is checked before any run is submitted: a bad line submits nothing.
    """
    if jsonl is not None:
        if data is not None or fields or wait:
            raise UsageError("--jsonl takes the payloads from its lines: no --data, -f or --wait")
        submit_lines(state, start, jsonl, key, deadline, max_steps)
        return
    payload = parse_fields(data, fields)
    orchestrator = state.orchestrator
    run_id = orchestrator.submit(
        start, payload, idempotency_key=key, deadline=deadline, max_steps=max_steps
    )
    warn_if_unserved(state, start)
    if wait:
        try:
            view = live.follow(orchestrator, run_id, Console(stderr=True), timeout, False)
            outcome = view.record.to_status()
        except KeyboardInterrupt:
            click.echo(run_id)
            click.echo(f"interrupted; run {run_id} goes on (ezgraph status {run_id})", err=True)
            sys.exit(130)
        print_outcome(outcome, waited=timeout)
        click.echo(run_id)
        if outcome["status"] != RunStatus.FINISHED:
            sys.exit(1)
        return
    click.echo(run_id)


MAX_BAD_LINES = 20  # bad lines of a --jsonl input reported one by one


def read_lines(lines: BinaryIO, limit: int) -> tuple[list[dict[str, Any]], list[int], list[str]]:
    """The payloads of a JSON-lines input, their line numbers, and one message per bad line
    (blank lines are skipped, and counted)."""
    payloads: list[dict[str, Any]] = []
    numbers: list[int] = []
    bad: list[str] = []
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode()
            if not text.strip():
                continue
            payload = json.loads(text)
            if not isinstance(payload, dict):
                raise UsageError(f"must be a JSON object, got {type(payload).__name__}")
            to_json(payload, "payload", limit)
        except UnicodeDecodeError:
            bad.append(f"line {number}: not UTF-8")
        except (ValueError, RecursionError, UsageError) as error:
            what = "" if isinstance(error, UsageError) else "not valid JSON: "
            bad.append(f"line {number}: {what}{one_line(error)}")
        else:
            payloads.append(payload)
            numbers.append(number)
    return payloads, numbers, bad


def submit_lines(
    state: CliState,
    start: str,
    lines: BinaryIO,
    key: str | None,
    deadline: float | None = None,
    max_steps: int | None = None,
) -> None:
    """``submit --jsonl``: read and check every line, then submit them all (or nothing)."""
    payloads, numbers, bad = read_lines(lines, state.settings.max_payload_bytes)
    name = getattr(lines, "name", "-")
    if bad:
        for line in bad[:MAX_BAD_LINES]:
            click.echo(f"error: {line}", err=True)
        more = f" (the first {MAX_BAD_LINES} shown)" if len(bad) > MAX_BAD_LINES else ""
        raise UsageError(f"{len(bad)} bad lines in {name}{more}: nothing submitted")
    if not payloads:
        raise UsageError(f"no JSON lines in {name}: nothing submitted")
    keys = [f"{key}:{number}" for number in numbers] if key is not None else None
    try:
        run_ids = state.orchestrator.submit_many(
            start, payloads, idempotency_keys=keys, deadline=deadline, max_steps=max_steps
        )
    except SubmitInterrupted as error:
        for run_id in error.run_ids:
            click.echo(run_id)
        if keys is None:
            first, last = len(error.run_ids), len(error.run_ids) + len(error.unsure) - 1
            resume = f" (those unsure: lines {numbers[first]}-{numbers[max(first, last)]})"
        else:
            resume = "; the same command again submits the rest, each key's run once"
        raise EzgraphError(f"{error}{resume}") from None
    warn_if_unserved(state, start)
    click.echo("\n".join(run_ids))


def warn_if_unserved(state: CliState, start: str) -> None:
    """Say on stderr when no live worker serves the start node's queue: the run would wait."""
    if not serving(read_workers(state.context), start):
        click.echo(
            f"warning: no live worker serves queue {start!r}: the run waits until one starts"
            f" (ezgraph worker {start}, or rq worker {start})",
            err=True,
        )


@cli.command()
@click.argument("start")
@payload_options
@pass_state
def run(state: CliState, start: str, data: str | None, fields: tuple[str, ...]) -> None:
    """Run one submission here and print its result.

    It runs every step in this process, to the run's end. With nothing configured this uses
    the embedded server, so it works on a machine with no Redis installed.
    """
    payload = parse_fields(data, fields)
    context, orchestrator = state.context, state.orchestrator
    if logging.getLogger().level > logging.INFO:
        # The run's error (or the database's) is printed once, below; without -v, do not log
        # it first as well, once per attempt to write the run.
        for name in ("ezgraph.completion", "ezgraph.handover"):
            logging.getLogger(name).setLevel(logging.ERROR)
    run_id = orchestrator.submit(start, payload)
    serve_until_ended(context, run_id)
    outcome = orchestrator.status(run_id)
    print_outcome(outcome)
    try:
        context.store.load_run(run_id)  # the worker wrote it as it stopped, unless the database
    except ConnectionFailed as error:  # is down: then say so, once
        raise EzgraphError(
            f"run {run_id} {outcome['status']}, but is not in SQL: {error}; it waits in Redis"
            " for ezgraph persist"
        ) from None
    if outcome["status"] != RunStatus.FINISHED:
        sys.exit(1)
    click.echo(f"run {run_id} finished", err=True)


@cli.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the whole status as JSON.")
@click.option("--watch", "-w", is_flag=True, help="Follow the run, redrawn as it goes, to its end.")
@click.option(
    "--follow",
    "-F",
    is_flag=True,
    help="Print the run's events from the first (progress, events, steps' starts and ends),"
    " then the new ones to its end; with --json, one JSON object a line.",
)
@click.option(
    "--timeout",
    callback=seconds(),
    default=3600.0,
    show_default=True,
    help="Seconds --watch or --follow waits.",
)
@pass_state
def status(
    state: CliState, run_id: str, as_json: bool, watch: bool, follow: bool, timeout: float
) -> None:
    """Show a run and the status of each of its nodes.

    Pending nodes too, then its result or error; --watch follows it to its end, --follow
    prints its events as they come.
    """
    orchestrator = state.orchestrator
    if follow:
        if watch:
            raise UsageError("--follow and --watch are two views of a run: choose one")
        follow_events(orchestrator, run_id, as_json, timeout)
        return
    if watch and not as_json:
        try:
            view = live.follow(orchestrator, run_id, Console(), timeout)
        except KeyboardInterrupt:
            sys.exit(130)
    else:
        view = view_run(orchestrator, run_id, with_rq=False)
    if as_json:
        click.echo(json.dumps(view.to_json(), ensure_ascii=False, indent=2))
        return
    current = view.record
    if not watch:
        click.echo(f"run {current.run_id}: {current.status}")
        for line in node_lines(view):
            click.echo(line)
    if current.error:
        click.echo(f"error: {current.error}")
    if current.result is not None:
        click.echo("result: " + json.dumps(current.result, ensure_ascii=False))
    if view.terminal and state.settings.notify_url is not None:
        click.echo(notification_line(state.orchestrator.context, current.run_id))


def notification_line(context: Context, run_id: str) -> str:
    """Where the run's POST to FLOW_ORCHESTRATION_URL is."""
    try:
        notification = context.notifications.of(run_id)
    except ConnectionFailed as error:
        return f"notification: unknown ({error})"
    if notification is None:
        return "notification: none yet (sent once the run is in SQL)"
    tries = f"{notification.attempts} attempt{'s' if notification.attempts != 1 else ''}"
    if notification.state == "delivered":
        return f"notification: delivered ({tries})"
    last = f": {notification.last_error}" if notification.last_error else ""
    if notification.state == "failed":
        return f"notification: failed ({tries}){last}"
    return f"notification: pending ({tries}){last}"


def follow_events(
    orchestrator: GraphOrchestrator, run_id: str, as_json: bool, timeout: float
) -> None:
    """``status --follow``: the run's events from the first, then as they come, to its end;
    then (not with --json) its status and error."""
    try:
        for event in orchestrator.events(run_id, follow=True, timeout=timeout):
            click.echo(json.dumps(event, ensure_ascii=False) if as_json else live.event_line(event))
    except KeyboardInterrupt:
        sys.exit(130)
    if not as_json:
        current = orchestrator.get_run(run_id)
        click.echo(f"run {run_id}: {current.status}")
        if current.error:
            click.echo(f"error: {current.error}")


def node_lines(view: RunView) -> list[str]:
    """One line per node (a mapped node: its progress), graph order."""
    steps = {step.step: step for step in view.record.steps}
    lines = []
    for node, node_status in view.nodes.items():
        step = steps.get(node)
        if node in view.maps:
            progress = view.maps[node]
            counts = ", ".join(f"{n} {s}" for s, n in progress.by_status.items())
            lines.append(f"  {node:<28} {node_status} ({progress.label}: {counts})")
            continue
        attempts = f" (attempts: {step.attempts})" if step and step.attempts > 1 else ""
        waiting = f" (for signal {step.waiting_for!r})" if step and step.waiting_for else ""
        lines.append(f"  {node:<28} {node_status}{waiting}{attempts}")
    return lines


@cli.command()
@click.argument("run_id")
@pass_state
def cancel(state: CliState, run_id: str) -> None:
    """Cancel a run, stopping its steps where RQ can.

    Its queued steps are canceled, its running steps stopped where RQ can.
    """
    current = state.orchestrator.cancel(run_id)
    running = [name for name, status in current["nodes"].items() if status == "running"]
    still = f" ({len(running)} still running: {', '.join(running)})" if running else ""
    click.echo(f"run {run_id}: {current['status']}{still}")


@cli.command()
@click.argument("run_id")
@pass_state
def retry(state: CliState, run_id: str) -> None:
    """Resume a failed run from its failed steps.

    Its failed and canceled steps run again, finished ones do not.
    """
    current = state.orchestrator.retry(run_id)
    again = [name for name, status in current["nodes"].items() if status in ("queued", "running")]
    click.echo(f"run {run_id}: {current['status']} (steps to run again: {', '.join(again)})")


@cli.command()
@click.argument("run_id")
@click.argument("name")
@click.option("--data", default=None, help="The signal's data: any JSON value (default null).")
@pass_state
def signal(state: CliState, run_id: str, name: str, data: str | None) -> None:
    """Send signal NAME to a run: its waiting step goes on.

    The signal is kept first, so one sent before the step waits is not lost; each name is
    sent once per run.
    """
    value = None
    if data is not None:
        try:
            value = json.loads(data)
        except (ValueError, RecursionError) as error:
            raise UsageError(f"--data is not valid JSON: {one_line(error)}") from None
    current = state.orchestrator.signal(run_id, name, value)
    click.echo(f"run {run_id}: {current['status']} (signal {name!r} sent)")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_state
def queues(state: CliState, as_json: bool) -> None:
    """Show the jobs waiting in each node's queue."""
    counts = state.orchestrator.list_queues()
    if as_json:
        click.echo(json.dumps(counts))
        return
    for node, count in counts.items():
        click.echo(f"{node:<28} {count}")
