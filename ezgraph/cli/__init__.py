"""The ``ezgraph`` command line: submit, run, status, cancel, retry, queues, worker, check...

Every ezgraph error becomes one line on stderr: exit code 2 for usage, 1 for failures.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from .. import embedded, handover
from ..chaos import CHAOS_GRAPH, Chaos
from ..client import GraphOrchestrator
from ..connection import redis_url
from ..context import Runtime
from ..errors import ConnectionFailed, EzgraphError, UsageError
from ..model.graph import EXAMPLE_PACKAGE, default_package, load_graph
from ..model.records import RunStatus
from ..recovery import GRACE, watch_runs
from ..settings import MAX_SECONDS, Settings, redact_url
from ..state.sql import Store
from ..workers.fast import reap_dead_workers
from ..workers.module_worker import run_worker

F = TypeVar("F", bound=Callable[..., Any])

USES_GRAPH = {"run", "submit", "worker", "check", "viz", "queues"}  # say which graph they use
FIELD_HELP = "A field of the payload: key=value (a string) or key:=JSON (any JSON value)."


def seconds(low: float = 0.0, closed: bool = False) -> Callable[..., float]:
    """A click callback for a number of seconds: finite, above ``low`` (from it, with
    ``closed``), at most ``MAX_SECONDS``: nan, inf and negative waits are refused before
    anything is done."""

    def check(ctx: click.Context, param: click.Parameter, value: float) -> float:
        above = value >= low if closed else value > low
        if not (math.isfinite(value) and above and value <= MAX_SECONDS):
            bound = f"from {low:g}" if closed else f"above {low:g}"
            raise click.BadParameter(f"{value:g} is not a number of seconds {bound}")
        return value

    return check


class Context:
    """What every command gets: settings, and a runtime opened on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._runtime: Runtime | None = None

    @property
    def runtime(self) -> Runtime:
        """The runtime (connects to Redis, starting the embedded server if that is the mode)."""
        if self._runtime is None:
            self._runtime = Runtime(self.settings)
        return self._runtime

    @property
    def orchestrator(self) -> GraphOrchestrator:
        """An orchestrator on this context's runtime."""
        return GraphOrchestrator(runtime=self.runtime)


pass_context = click.make_pass_decorator(Context)


@click.group()
@click.option(
    "--modules", "-m", help="Modules package holding GRAPH_CONNECTIONS [EZGRAPH_MODULES]."
)
@click.option("--redis-url", "-u", help="Redis URL [REDIS_URL]; none means the embedded server.")
@click.option("--database-url", "-d", help="SQLAlchemy URL of the results database [DATABASE_URL].")
@click.option("--verbose", "-v", is_flag=True, help="Log at INFO level.")
@click.version_option(package_name="ezgraph")
@click.pass_context
def cli(
    ctx: click.Context,
    modules: str | None,
    redis_url: str | None,
    database_url: str | None,
    verbose: bool,
) -> None:
    """Run a graph of Python modules over RQ queues; every run is kept in SQL."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if "." not in sys.path and "" not in sys.path:
        sys.path.insert(0, "")  # the modules package lives in the working directory
    settings = Settings.from_env(
        modules_package=modules, redis_url=redis_url, database_url=database_url
    )
    if settings.modules_package is None:
        settings = settings.replace(modules_package=default_package())
        if settings.modules_package == EXAMPLE_PACKAGE and ctx.invoked_subcommand in USES_GRAPH:
            click.echo(
                f"no modules package here: using the example graph shipped with ezgraph"
                f" ({EXAMPLE_PACKAGE}); set EZGRAPH_MODULES or add a modules/ package",
                err=True,
            )
    ctx.obj = Context(settings)


def parse_fields(data: str | None, fields: Sequence[str]) -> dict[str, Any]:
    """Build a payload from ``--data`` JSON and ``-f key=value`` / ``-f key:=json`` fields."""
    payload: dict[str, Any] = {}
    if data is not None:
        try:
            loaded = json.loads(data)
        except (ValueError, RecursionError) as error:  # also: nested too deep, too many digits
            raise UsageError(f"--data is not valid JSON: {_one_line(error)}") from None
        if not isinstance(loaded, dict):
            raise UsageError("--data must be a JSON object")
        payload.update(loaded)
    for field in fields:
        if ":=" in field and field.index(":=") < field.find("=") + 1:
            key, _, raw = field.partition(":=")
            try:
                payload[key] = json.loads(raw)
            except (ValueError, RecursionError) as error:
                raise UsageError(f"-f {key}:= is not valid JSON: {_one_line(error)}") from None
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


@cli.command()
@click.argument("start")
@payload_options
@click.option("--wait", is_flag=True, help="Wait for the run to end and print its result.")
@click.option(
    "--timeout", callback=seconds(), default=60.0, show_default=True, help="Seconds --wait waits."
)
@pass_context
def submit(
    context: Context,
    start: str,
    data: str | None,
    fields: tuple[str, ...],
    wait: bool,
    timeout: float,
) -> None:
    """Submit a run starting at module START; prints the run id last."""
    payload = parse_fields(data, fields)
    orchestrator = context.orchestrator
    run_id = orchestrator.submit(start, payload)
    if wait:
        try:
            outcome = orchestrator.wait(run_id, timeout=timeout)
        except KeyboardInterrupt:
            click.echo(run_id)
            click.echo(f"interrupted; run {run_id} goes on (ezgraph status {run_id})", err=True)
            sys.exit(130)
        _print_outcome(outcome, waited=timeout)
        click.echo(run_id)
        if outcome["status"] != RunStatus.FINISHED:
            sys.exit(1)
        return
    click.echo(run_id)


@cli.command()
@click.argument("start")
@payload_options
@pass_context
def run(context: Context, start: str, data: str | None, fields: tuple[str, ...]) -> None:
    """Run one submission to completion in this process and print its result.

    With nothing configured this uses the embedded server, so it works on a machine with no
    Redis installed.
    """
    payload = parse_fields(data, fields)
    runtime = context.runtime
    orchestrator = context.orchestrator
    if logging.getLogger().level > logging.INFO:
        # The run's error (or the database's) is printed once, below; without -v, do not log
        # it first as well, once per attempt to write the run.
        logging.getLogger("ezgraph.step").setLevel(logging.ERROR)
        logging.getLogger("ezgraph.context").setLevel(logging.ERROR)
    run_id = orchestrator.submit(start, payload)
    while True:
        # With the scheduler, so a step's delayed retry runs here too once its interval passed.
        run_worker(runtime, burst=True, log_level="WARNING")
        outcome = orchestrator.status(run_id)
        if RunStatus(outcome["status"]).terminal:
            break
        time.sleep(0.2)  # a retry is waiting for its interval (or a step runs elsewhere)
    _print_outcome(outcome)
    try:
        runtime.store.load_run(run_id)  # the worker wrote it as it stopped, unless the database
    except ConnectionFailed as error:  # is down: then say so, once
        raise EzgraphError(
            f"run {run_id} {outcome['status']}, but is not in SQL: {error}; it waits in Redis"
            " for ezgraph persist"
        ) from None
    if outcome["status"] != RunStatus.FINISHED:
        sys.exit(1)
    click.echo(f"run {run_id} finished", err=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _one_line(text: object) -> str:
    """``text`` on one line (an error may hold newlines: a traceback, a database's message)."""
    return " ".join(str(text).split())


def _print_outcome(outcome: dict[str, Any], waited: float | None = None) -> None:
    """The result on stdout, or one line on stderr: the run's error, or that it goes on."""
    run_id, current = outcome["run_id"], RunStatus(outcome["status"])
    if current == RunStatus.FINISHED:
        click.echo(json.dumps(outcome["result"], ensure_ascii=False, indent=2))
    elif current.terminal:
        click.echo(f"run {run_id} {current}: {_one_line(outcome['error'])}", err=True)
    else:
        after = f" after {waited:g} s" if waited is not None else ""
        click.echo(
            f"run {run_id} is still {current}{after}; it goes on (ezgraph status {run_id})",
            err=True,
        )


@cli.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the whole status as JSON.")
@pass_context
def status(context: Context, run_id: str, as_json: bool) -> None:
    """Show a run: its status, each step's status, its result or error."""
    current = context.orchestrator.status(run_id)
    if as_json:
        click.echo(json.dumps(current, ensure_ascii=False, indent=2))
        return
    click.echo(f"run {current['run_id']}: {current['status']}")
    for step in current["steps"]:
        attempts = f" (attempts: {step['attempts']})" if step["attempts"] > 1 else ""
        click.echo(f"  {step['step']:<28} {step['status']}{attempts}")
    if current["error"]:
        click.echo(f"error: {current['error']}")
    if current["result"] is not None:
        click.echo("result: " + json.dumps(current["result"], ensure_ascii=False))


@cli.command()
@click.argument("run_id")
@pass_context
def cancel(context: Context, run_id: str) -> None:
    """Cancel a run: its queued steps are canceled, its running steps stopped where RQ can."""
    current = context.orchestrator.cancel(run_id)
    running = [name for name, status in current["nodes"].items() if status == "running"]
    still = f" ({len(running)} still running: {', '.join(running)})" if running else ""
    click.echo(f"run {run_id}: {current['status']}{still}")


@cli.command()
@click.argument("run_id")
@pass_context
def retry(context: Context, run_id: str) -> None:
    """Resume a failed run: its failed and canceled steps run again, finished ones do not."""
    current = context.orchestrator.retry(run_id)
    again = [name for name, status in current["nodes"].items() if status in ("queued", "running")]
    click.echo(f"run {run_id}: {current['status']} (steps to run again: {', '.join(again)})")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_context
def queues(context: Context, as_json: bool) -> None:
    """Jobs waiting in each module's queue."""
    counts = context.orchestrator.list_queues()
    if as_json:
        click.echo(json.dumps(counts))
        return
    for node, count in counts.items():
        click.echo(f"{node:<28} {count}")


@cli.command()
@click.argument("nodes", nargs=-1)
@click.option("--burst", is_flag=True, help="Exit when the queues are empty.")
@pass_context
def worker(context: Context, nodes: tuple[str, ...], burst: bool) -> None:
    """Serve the queues of NODES (default: every node of the graph)."""
    runtime = context.runtime
    graph = runtime.graph()
    unknown = [node for node in nodes if node not in graph.connections]
    if unknown:
        raise UsageError(f"unknown node {unknown[0]!r} (graph nodes: {', '.join(graph.nodes)})")
    level = "INFO" if logging.getLogger().level <= logging.INFO else "WARNING"
    run_worker(runtime, list(nodes) or None, burst=burst, log_level=level)


@cli.command("init-db")
@pass_context
def init_db(context: Context) -> None:
    """Create ezgraph's tables in the database (first use does it too)."""
    Store(context.settings.database_url).create_schema()
    click.echo(f"schema ready in {redact_url(context.settings.database_url)}")


@cli.command()
@click.option(
    "--follow",
    is_flag=True,
    help="Keep writing runs as they end, in batches, until stopped; stock workers leave the "
    "writing to it meanwhile.",
)
@pass_context
def persist(context: Context, follow: bool) -> None:
    """Write every ended run still waiting in Redis to the database now (or as they end)."""
    runtime = context.runtime
    try:
        runtime.store.create_schema()  # fails in one line when the database does not answer
    except ConnectionFailed as error:
        waiting = runtime.book.unsaved_count()
        raise ConnectionFailed(f"{error} ({waiting} runs keep waiting in Redis)") from None
    if not follow:
        count = runtime.save_unsaved()
        click.echo(f"{count} runs written")
        return
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: stopped.set())
    click.echo("writing ended runs to the database as they end (Ctrl-C stops)")
    handover.follow(runtime, stopped, f"persist-{os.getpid()}")
    click.echo("stopped")


@cli.command()
@pass_context
def check(context: Context) -> None:
    """Validate the graph and its modules; print the verdict."""
    graph = load_graph(context.settings.modules_package)
    edges = sum(len(s) for s in graph.connections.values())
    joins = [n for n in graph.nodes if graph.is_join(n)]
    click.echo(
        f"ok: {graph.package}: {len(graph.nodes)} nodes, {edges} edges"
        + (f", joins: {', '.join(joins)}" if joins else "")
    )


@cli.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "mermaid", "dot"]),
    default="text",
    show_default=True,
)
@pass_context
def viz(context: Context, fmt: str) -> None:
    """Draw the graph as text, Mermaid or Graphviz dot."""
    graph = load_graph(context.settings.modules_package)
    if fmt == "mermaid":
        click.echo("graph TD")
        for node, successors in graph.connections.items():
            for successor in successors:
                click.echo(f"    {node} --> {successor}")
    elif fmt == "dot":
        click.echo("digraph ezgraph {")
        for node, successors in graph.connections.items():
            click.echo(f"  {node};")
            for successor in successors:
                click.echo(f"  {node} -> {successor};")
        click.echo("}")
    else:
        for node, successors in graph.connections.items():
            label = " (join)" if graph.is_join(node) else ""
            click.echo(f"{node}{label} -> {', '.join(successors) or '(end)'}")


@cli.command()
@click.option("--loop", is_flag=True, help="Keep watching, one pass a second, until interrupted.")
@pass_context
def reap(context: Context, loop: bool) -> None:
    """Recover steps whose worker died, or that got lost from their queue.

    Every ezgraph worker does this each second; run it where only stock rq workers run. It
    looks at runs over 2 s old, and acts on a step once it has looked lost for 2 s: a single
    pass that finds one looks again 2 s later. With --loop, Ctrl-C ends it (exit 0).
    """
    runtime = context.runtime
    try:
        while True:
            reports = [reap_dead_workers(runtime), watch_runs(runtime)]
            if reports[1].suspected and not loop:
                time.sleep(GRACE + 0.1)  # this process's clock; the watchdog times by Redis's
                reports.append(watch_runs(runtime))
            requeued = sum(len(report.requeued) for report in reports)
            failed = sum(len(report.failed) for report in reports)
            if requeued or failed or not loop:
                click.echo(f"requeued {requeued} steps, failed {failed} lost steps")
            if not loop:
                return
            time.sleep(1)
    except KeyboardInterrupt:
        if not loop:
            raise


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
@pass_context
def chaos(
    context: Context,
    runs: int,
    workers: int,
    every: float,
    jitter: float,
    work_ms: float,
    timeout: float,
    own_graph: bool,
) -> None:
    """Crash audit: SIGKILL busy workers while runs flow, then count what was lost or doubled.

    Exits 1 when a run was lost or failed, or a row or side effect was duplicated.
    """
    settings = context.settings
    if not own_graph:
        settings = settings.replace(modules_package=CHAOS_GRAPH)
    runtime = Runtime(settings)
    signal.signal(signal.SIGTERM, _interrupt)  # as Ctrl-C: the audit stops its workers first
    audit = Chaos(
        runtime,
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


@cli.group()
def server() -> None:
    """The embedded Redis-compatible server used when no Redis is configured."""


@server.command("url")
@pass_context
def server_url(context: Context) -> None:
    """Print the Redis URL every command uses (starting the embedded server if needed)."""
    click.echo(redis_url(context.settings))


@server.command("start")
@pass_context
def server_start(context: Context) -> None:
    """Start the embedded server (a no-op when it runs)."""
    click.echo(embedded.ensure_server(context.settings.home))


@server.command("stop")
@pass_context
def server_stop(context: Context) -> None:
    """Stop the embedded server."""
    stopped = embedded.stop_server(context.settings.home)
    click.echo("stopped" if stopped else "not running")


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
