"""The dashboard's own pages: the runs list and a run (its graph, steps, events, cancel and
retry).

Pages are Jinja templates (``templates/ezgraph``); a live run's page asks ``/runs/<id>.json``
every second and reloads its graph, steps and events (``/runs/<id>/live``) when they changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from markupsafe import Markup
from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response as BaseResponse

from ..client import GraphOrchestrator
from ..context import Context
from ..errors import EzgraphError, InvalidRunOperation, RenderError, RunNotFound, UsageError
from ..model.records import RunStatus
from ..ops.drawing import INSTALL_HINT, draw, graphviz_available
from ..ops.listing import list_runs, parse_since
from ..ops.run_view import RunView, truncate, view_run
from ..state.history import RunQuery

Hook = Callable[[], Response | None]
PAGE_SIZES = (20, 50, 100, 200)  # offered by the page's form
MAX_PAGE = 500
EVENTS_SHOWN = 200  # a run page shows its newest events, this many
blueprint = Blueprint("ezgraph", __name__)  # templates and static files: the app's folders


@dataclass
class Dashboard:
    """What the pages work with: the context, and whether they may change runs."""

    context: Context
    read_only: bool
    poll_ms: int

    @property
    def orchestrator(self) -> GraphOrchestrator:
        """An orchestrator on the dashboard's context."""
        return GraphOrchestrator(context=self.context)


def dashboard() -> Dashboard:
    """The app's :class:`Dashboard`."""
    found: Dashboard = current_app.extensions["ezgraph"]
    return found


@blueprint.app_template_filter("when")
def when(value: datetime | str | None) -> str:
    """A date as ``2026-11-29 14:03:07`` UTC (blank for none)."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S")


@blueprint.app_template_filter("took")
def took(pair: tuple[datetime | None, datetime | None]) -> str:
    """The time between two dates, ``12 ms``, ``3.4 s`` or ``2 min`` (blank if one is none)."""
    began, ended = pair
    if began is None or ended is None:
        return ""
    seconds = (ended - began).total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


@blueprint.app_template_filter("cut")
def cut(value: Any, limit: int = 2_000) -> str:
    """A value as text, at most ``limit`` characters."""
    return "" if value is None else truncate(value, limit)


@blueprint.app_template_filter("dict_with")
def dict_with(values: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``values`` with ``changes`` (a link to the next page keeps the filters)."""
    return {**values, **changes}


@blueprint.app_template_filter("dict_without")
def dict_without(values: dict[str, Any], key: str) -> dict[str, Any]:
    """``values`` without ``key``."""
    return {k: v for k, v in values.items() if k != key}


@blueprint.get("/")
@blueprint.get("/runs")
def runs() -> str | BaseResponse:
    """The runs list: live and stored, newest first, filtered, a page at a time."""
    board = dashboard()
    args = request.args
    wanted = args.get("run_id", "").strip()
    if len(wanted) == 32:  # a whole id: straight to its page
        return redirect(url_for(".run", run_id=wanted))
    try:
        query = RunQuery(
            status=args.get("status") or None,
            start=args.get("start") or None,
            since=parse_since(args["since"]) if args.get("since") else None,
            run_id=wanted or None,
        )
        limit = int(args.get("limit", 50))
        if not 1 <= limit <= MAX_PAGE:
            raise UsageError(f"limit must be from 1 to {MAX_PAGE}")
        page = list_runs(board.context, query, limit, args.get("after") or None)
    except (UsageError, ValueError) as error:
        return render_template("ezgraph/error.html", message=str(error)), 400  # type: ignore[return-value]
    context = board.context
    return render_template(
        "ezgraph/runs.html",
        page=page,
        query=query,
        args=args,
        limit=limit,
        statuses=[str(s) for s in RunStatus],
        starts=_nodes(context),
        live=context.connection.zcard(context.keys.live_runs),
        unsaved=context.runs.unsaved_count(),
        page_sizes=PAGE_SIZES,
    )


@blueprint.get("/runs/<run_id>")
def run(run_id: str) -> str:
    """A run: its graph coloured by status, its steps, cancel and retry."""
    board = dashboard()
    view = _view(run_id)
    return render_template(
        "ezgraph/run.html",
        view=view,
        record=view.record,
        graph=_graph_markup(view),
        read_only=board.read_only,
        poll_ms=board.poll_ms,
        **_events(run_id),
    )


@blueprint.get("/runs/<run_id>/live")
def run_live(run_id: str) -> str:
    """The changing part of a run's page (graph, header, steps), for its poll."""
    view = _view(run_id)
    return render_template(
        "ezgraph/run_live.html",
        view=view,
        record=view.record,
        graph=_graph_markup(view),
        **_events(run_id),
    )


@blueprint.get("/runs/<run_id>.json")
def run_json(run_id: str) -> Response:
    """A run's status, every node's status and its maps' progress, as JSON (with how many
    events its steps emitted while it is in Redis: the page's poll sees them come)."""
    status = _view(run_id, with_rq=False).to_json()
    context = dashboard().context
    status["events"] = context.connection.xlen(context.keys.events(run_id))
    return jsonify(status)


@blueprint.get("/runs/<run_id>/events.json")
def run_events(run_id: str) -> Response:
    """A run's events from the first (``GraphOrchestrator().events``), as a JSON list."""
    try:
        return jsonify(list(dashboard().orchestrator.events(run_id)))
    except (RunNotFound, UsageError) as error:
        raise NotFound(str(error)) from None


@blueprint.get("/runs/<run_id>/graph.<fmt>")
def run_graph(run_id: str, fmt: str) -> Response:
    """A run's graph as an SVG or PNG image, or as DOT or Mermaid text."""
    view = _view(run_id, with_rq=False)
    if fmt in ("dot", "mermaid"):
        return Response(view.drawing(fmt), content_type="text/plain; charset=utf-8")
    try:
        image = draw(view.drawing("dot"), fmt)
    except RenderError as error:
        return Response(f"{error}\n", 404 if "cannot draw" in str(error) else 501)
    types = {"svg": "image/svg+xml", "png": "image/png"}
    return Response(image, content_type=types[fmt])


@blueprint.post("/runs/<run_id>/cancel")
def cancel(run_id: str) -> BaseResponse:
    """Cancel a run (the form's POST), then show it."""
    return _act(run_id, "cancel")


@blueprint.post("/runs/<run_id>/retry")
def retry(run_id: str) -> BaseResponse:
    """Retry a failed run (the form's POST), then show it."""
    return _act(run_id, "retry")


def _act(run_id: str, action: str) -> BaseResponse:
    board = dashboard()
    if board.read_only:  # the guard refuses it first; this is the second lock
        raise NotFound()
    orchestrator = board.orchestrator
    try:
        if action == "cancel":
            current = orchestrator.cancel(run_id, stop_wait=0.5)
        else:
            current = orchestrator.retry(run_id)
        flash(f"{action}: run is {current['status']}", "ok")
    except RunNotFound as error:
        raise NotFound(str(error)) from None
    except (InvalidRunOperation, UsageError) as error:
        flash(f"{action}: {error}", "error")
    return redirect(url_for(".run", run_id=run_id))


def _view(run_id: str, with_rq: bool = True) -> RunView:
    try:
        return view_run(dashboard().orchestrator, run_id, with_rq=with_rq)
    except (RunNotFound, UsageError) as error:
        raise NotFound(str(error)) from None


def _events(run_id: str) -> dict[str, Any]:
    """A run page's events: the newest, how many in all, and each step's last progress."""
    events = list(dashboard().orchestrator.events(run_id))
    progress = {e["step"]: e for e in events if e.get("type") == "progress"}
    return {"events": events[-EVENTS_SHOWN:], "event_count": len(events), "progress": progress}


def _graph_markup(view: RunView) -> Markup:
    """The run's graph as inline SVG, or, without Graphviz (or the graph's package), a note and
    the graph as text."""
    if view.graph is not None and graphviz_available():
        try:
            svg = draw(view.drawing("dot"), "svg").decode()
            return Markup(svg[svg.find("<svg") :])  # without the XML prolog and DOCTYPE
        except RenderError as error:
            note = str(error)
    elif view.graph is None:
        note = f"the graph's package {view.record.package!r} cannot be imported here"
    else:
        note = INSTALL_HINT
    text = view.drawing("text")
    return Markup(render_template("ezgraph/graph_text.html", note=note, text=text))


def _nodes(context: Context) -> tuple[str, ...]:
    try:
        return context.graph().nodes
    except EzgraphError:
        return ()
