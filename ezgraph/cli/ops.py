"""Commands for operators: dashboard, metrics, runs, top, diagnose, procfile."""

from __future__ import annotations

import ipaddress
import json
import signal
import sys

import click
from prometheus_client import generate_latest
from rich.console import Console
from werkzeug.serving import make_server

from ..errors import UsageError
from ..ops.diagnose import diagnose as find_causes
from ..ops.listing import list_runs, parse_since
from ..ops.metrics import registry_for
from ..settings import Settings
from ..state.history import RunQuery
from ..web.app import DashboardOptions, create_app, create_metrics_app
from .app import CliState, cli, interrupt, one_line, pass_state
from .top import Top

AUTH_HELP = "HTTP basic auth {} [EZGRAPH_DASHBOARD_{}]; with the other, required off loopback."


def serve_options(default_port: int) -> list[click.Option]:
    """The ``--bind``, ``--port``, ``--username`` and ``--password`` options."""
    return [
        click.Option(
            ["--bind", "-b"], default="127.0.0.1", show_default=True, help="Address to listen on."
        ),
        click.Option(
            ["--port", "-p"],
            type=click.IntRange(1, 65535),
            default=default_port,
            show_default=True,
            help="Port to listen on.",
        ),
        click.Option(["--username"], help=AUTH_HELP.format("user", "USERNAME")),
        click.Option(["--password"], help=AUTH_HELP.format("password", "PASSWORD")),
    ]


def check_auth(
    settings: Settings, bind: str, username: str | None, password: str | None
) -> DashboardOptions:
    """The auth to serve with (flags over environment); refuses a non-loopback address without
    it, and a username without a password (or the reverse)."""
    username = username or settings.dashboard_username
    password = password or settings.dashboard_password
    if (username is None) != (password is None):
        raise UsageError("give both --username and --password (or neither)")
    if username is None and not _loopback(bind):
        raise UsageError(
            f"refusing to serve on {bind} without auth: give --username and --password"
            " (or EZGRAPH_DASHBOARD_USERNAME/PASSWORD), or bind 127.0.0.1"
        )
    return DashboardOptions(username=username, password=password)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def serve_app(app: object, bind: str, port: int, what: str) -> None:
    """Serve a WSGI app until Ctrl-C or SIGTERM (threaded: a slow page never blocks another)."""
    try:
        server = make_server(bind, port, app, threaded=True)  # type: ignore[arg-type]
    except OSError as error:
        raise UsageError(f"cannot listen on {bind}:{port}: {error.strerror or error}") from None
    signal.signal(signal.SIGTERM, interrupt)
    host = f"[{bind}]" if ":" in bind else bind
    click.echo(f"{what} on http://{host}:{server.port}/ (Ctrl-C stops)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    finally:
        server.server_close()


@cli.command()
@click.option("--read-only", is_flag=True, help="No cancel or retry, nothing rq-dashboard changes.")
@pass_state
def dashboard(
    state: CliState,
    bind: str,
    port: int,
    username: str | None,
    password: str | None,
    read_only: bool,
) -> None:
    """Serve the web dashboard: runs, their graphs, rq-dashboard.

    Runs (live and stored) at /, a run at /runs/<id>, rq-dashboard at /rq, Prometheus
    metrics at /metrics. Listens on 127.0.0.1 unless told; another address needs auth.
    """
    options = check_auth(state.settings, bind, username, password)
    options = DashboardOptions(
        read_only=read_only, username=options.username, password=options.password
    )
    serve_app(create_app(state.context, options), bind, port, "ezgraph dashboard")


dashboard.params[:0] = serve_options(9181)


@cli.command()
@click.option("--once", is_flag=True, help="Print the metrics once on stdout and exit.")
@pass_state
def metrics(
    state: CliState, bind: str, port: int, username: str | None, password: str | None, once: bool
) -> None:
    """Export Prometheus metrics of runs, steps, queues, workers.

    Computed at each scrape from Redis and SQL; the same as the dashboard's /metrics.
    """
    context = state.context
    if once:
        nodes = context.graph().nodes
        sys.stdout.write(generate_latest(registry_for(context, nodes)).decode())
        return
    options = check_auth(state.settings, bind, username, password)
    serve_app(create_metrics_app(context, options), bind, port, "ezgraph metrics")


metrics.params[:0] = serve_options(9108)


@cli.command()
@click.option(
    "--status",
    "-s",
    type=click.Choice(["queued", "running", "finished", "failed", "canceled"]),
    help="Only runs in this status.",
)
@click.option("--start", help="Only runs submitted at this node.")
@click.option("--since", help="Only runs created since: 30s, 15m, 1h, 2d, or an ISO date (UTC).")
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(1, 10_000),
    default=20,
    show_default=True,
    help="Runs to list.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_state
def runs(
    state: CliState,
    status: str | None,
    start: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List runs, newest first, live and stored."""
    query = RunQuery(status=status, start=start, since=parse_since(since) if since else None)
    page = list_runs(state.context, query, limit)
    for row in page.runs:
        created = row.created_at.isoformat() if row.created_at else ""
        if as_json:
            ended = row.ended_at.isoformat() if row.ended_at else None
            click.echo(
                json.dumps(
                    {
                        "run_id": row.run_id,
                        "start": row.start,
                        "status": row.status,
                        "created_at": created or None,
                        "ended_at": ended,
                        "error": row.error,
                    }
                )
            )
            continue
        took = ""
        if row.created_at and row.ended_at:
            took = f"{(row.ended_at - row.created_at).total_seconds():.3f}s"
        error = one_line(row.error)[:60] if row.error else ""
        line = f"{row.run_id}  {row.start:<20} {row.status:<9} {created[:19]:<19} {took:>9}"
        click.echo(f"{line}  {error}".rstrip())
    if not page.runs and not as_json:
        click.echo("no run matches", err=True)


@cli.command()
@click.option(
    "--interval",
    type=click.FloatRange(0.2, 3600),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option("--once", is_flag=True, help="Print one snapshot and exit.")
@pass_state
def top(state: CliState, interval: float, once: bool) -> None:
    """Show queues, workers and steps/s live.

    On a terminal the view redraws in place; elsewhere it prints a snapshot per interval.
    Ctrl-C ends it.
    """
    context = state.context
    Top(context, Console(), nodes=_nodes(state)).show(interval, once)


@cli.command()
@click.argument("run_id")
@pass_state
def diagnose(state: CliState, run_id: str) -> None:
    """Say why a run is stuck, and what unsticks it.

    Exits 1 when something keeps the run from moving on, 0 otherwise.
    """
    findings = find_causes(state.orchestrator, run_id)
    for finding in findings:
        click.echo(("stuck: " if finding.stuck else "ok: ") + finding.text)
    if any(finding.stuck for finding in findings):
        sys.exit(1)


@cli.command()
@click.option(
    "--stock", is_flag=True, help="Stock rq workers (plus the watchdog and the SQL writer)."
)
@click.option(
    "--dashboard-port",
    type=click.IntRange(0, 65535),
    default=9181,
    show_default=True,
    help="0 leaves the dashboard out.",
)
@pass_state
def procfile(state: CliState, stock: bool, dashboard_port: int) -> None:
    """Print a Procfile for this graph, one worker per node.

    Save it as Procfile and run honcho start (pip install 'ezgraph[ops]');
    honcho start -c NODE=3 runs three workers of a node.
    """
    graph = state.context.graph()
    package = graph.package
    ez = "ezgraph" if package == "modules" else f"ezgraph -m {package}"
    click.echo(f"# ezgraph procfile: {package} ({len(graph.nodes)} nodes). Start: honcho start")
    for node in graph.nodes:
        if stock:
            click.echo(f'{node}: rq worker {node} --with-scheduler --url "$({ez} server url)"')
        else:
            click.echo(f"{node}: {ez} worker {node}")
    if stock:
        click.echo(f"watchdog: {ez} reap --loop")
        click.echo(f"persist: {ez} persist --follow")
    if dashboard_port:
        click.echo(f"dashboard: {ez} dashboard --port {dashboard_port}")


def _nodes(state: CliState) -> tuple[str, ...]:
    try:
        return state.context.graph().nodes
    except UsageError:
        return ()
