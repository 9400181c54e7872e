"""The ``ezgraph`` command group, what every command gets, and the helpers they share."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable

import click

from ..client import GraphOrchestrator
from ..connection import redis_url
from ..context import Context
from ..model.graph import EXAMPLE_PACKAGE, default_package
from ..settings import MAX_SECONDS, Settings

USES_GRAPH = {
    "run",
    "submit",
    "worker",
    "check",
    "viz",
    "queues",
    "procfile",
}  # say which graph they use


class CliState:
    """What every command gets: the settings, and a context opened on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._context: Context | None = None

    @property
    def context(self) -> Context:
        """The context (connects to Redis, starting the embedded server if that is the mode,
        which it says on stderr)."""
        if self._context is None:
            if self.settings.embedded:
                click.echo(
                    f"no REDIS_URL set: using the embedded server {redis_url(self.settings)}",
                    err=True,
                )
            self._context = Context(self.settings)
        return self._context

    @property
    def orchestrator(self) -> GraphOrchestrator:
        """An orchestrator on this command's context."""
        return GraphOrchestrator(context=self.context)


pass_state = click.make_pass_decorator(CliState)


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
    ctx.obj = CliState(settings)


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


def one_line(text: object) -> str:
    """``text`` on one line (an error may hold newlines: a traceback, a database's message)."""
    return " ".join(str(text).split())


def interrupt(signum: int, frame: object) -> None:
    """A signal handler that stops a command as Ctrl-C does."""
    raise KeyboardInterrupt
