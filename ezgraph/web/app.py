"""``ezgraph dashboard``: one Flask app serving ezgraph's pages, rq-dashboard and ``/metrics``.

- ezgraph's pages (:mod:`ezgraph.web.views`): the runs list at ``/`` and ``/runs``, a run at
  ``/runs/<run_id>``, with cancel and retry buttons unless read-only.
- rq-dashboard's own blueprint, mounted as it is at ``/rq`` (queues, workers, jobs).
- ``/metrics`` (Prometheus, :mod:`ezgraph.ops.metrics`) and ``/healthz``.

Protection, for the whole app (rq-dashboard's pages too):

- HTTP basic auth when a username and password are given (compared in constant time), on
  every path but ``/healthz`` (it says only "ok", for container healthchecks);
- read-only: every method but GET/HEAD/OPTIONS is refused (rq-dashboard's requeue and
  delete included);
- cross-site requests: a POST whose ``Origin`` (or, lacking one, ``Referer``) names another
  host is refused; ezgraph's own forms also carry a CSRF token, a random value kept in the
  signed session cookie, signed again with itsdangerous (what Flask's sessions are made of,
  so no new dependency), checked on every POST to ezgraph's pages.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

import rq_dashboard
from flask import Flask, Response, abort, current_app, request, session
from itsdangerous import BadData, URLSafeTimedSerializer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from rq_dashboard.web import setup_rq_connection

from ..connection import redis_url
from ..context import Context
from ..ops.metrics import registry_for
from . import views

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
CSRF_MAX_AGE = 12 * 3600  # seconds a page's token stays good
RQ_PREFIX = "/rq"


@dataclass(frozen=True)
class DashboardOptions:
    """How the dashboard protects itself (see the module doc)."""

    read_only: bool = False
    username: str | None = None
    password: str | None = None
    poll_ms: int = 1_000  # how often a live run's page asks for its status


def create_app(context: Context, options: DashboardOptions | None = None) -> Flask:
    """The dashboard's Flask app on ``context`` (its Redis, database and graph)."""
    options = options or DashboardOptions()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secrets.token_hex(32),  # sessions and CSRF tokens live as long as the process
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        RQ_DASHBOARD_REDIS_URL=redis_url(context.settings),
        RQ_DASHBOARD_DISABLE_DELETE=options.read_only,
        RQ_DASHBOARD_POLL_INTERVAL=2_500,
    )
    app.extensions["ezgraph"] = views.Dashboard(context, options.read_only, options.poll_ms)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.register_blueprint(views.blueprint)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=RQ_PREFIX)
    setup_rq_connection(app)
    registry = registry_for(context, _nodes(context))
    app.before_request(_guard(options))

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> Response:
        context.connection.ping()
        return Response("ok\n", content_type="text/plain")

    return app


def create_metrics_app(context: Context, options: DashboardOptions | None = None) -> Flask:
    """A Flask app serving only ``/metrics`` and ``/healthz`` (``ezgraph metrics``), behind the
    same auth as the dashboard."""
    options = options or DashboardOptions()
    app = Flask(__name__)
    registry = registry_for(context, _nodes(context))
    app.before_request(_guard(DashboardOptions(True, options.username, options.password)))

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> Response:
        context.connection.ping()
        return Response("ok\n", content_type="text/plain")

    return app


def _nodes(context: Context) -> tuple[str, ...]:
    """The configured graph's nodes (none when its package cannot be imported here)."""
    try:
        return context.graph().nodes
    except Exception:  # the dashboard still shows runs of graphs it cannot import
        return ()


def _guard(options: DashboardOptions) -> views.Hook:
    """The check every request passes first: auth, read-only, cross-site POSTs, CSRF."""

    def guard() -> Response | None:
        if request.path == "/healthz":  # says only "ok": container healthchecks need no auth
            return None
        if options.username is not None and not _authorized(options):
            return Response(
                "ezgraph dashboard: log in\n",
                401,
                {"WWW-Authenticate": 'Basic realm="ezgraph", charset="UTF-8"'},
            )
        if request.method in SAFE_METHODS:
            return None
        if options.read_only:
            abort(403, "the dashboard is read-only")
        if not _same_origin():
            abort(403, "cross-site request refused")
        if not request.path.startswith(f"{RQ_PREFIX}/") and not _token_ok():
            abort(403, "missing or stale form token: reload the page and try again")
        return None

    return guard


def _authorized(options: DashboardOptions) -> bool:
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return False
    given = (auth.username or "").encode(), (auth.password or "").encode()
    user_ok = hmac.compare_digest(given[0], (options.username or "").encode())
    password_ok = hmac.compare_digest(given[1], (options.password or "").encode())
    return user_ok and password_ok


def _same_origin() -> bool:
    """False when the request's Origin (else Referer) names another host than this one."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return source is None  # an opaque origin ("null") is never ours
    return urlsplit(source).netloc == request.host


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="ezgraph-csrf")


def csrf_token() -> str:
    """This session's form token (a random value kept in the session, signed)."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_hex(16)
    token: str = _serializer().dumps(session["csrf"])
    return token


def _token_ok() -> bool:
    token = request.form.get("csrf_token", "")
    try:
        value = _serializer().loads(token, max_age=CSRF_MAX_AGE)
    except BadData:
        return False
    return "csrf" in session and hmac.compare_digest(str(value), str(session["csrf"]))
