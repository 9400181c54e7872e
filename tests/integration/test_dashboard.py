"""The dashboard's pages through Flask's test client, on a real Redis and real databases:
the runs list (live and stored, newest first, filters, find by id, pages), a run's page,
cancel and retry with their protections, basic auth, read-only, and rq-dashboard at /rq."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from flask.testing import FlaskClient
from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.web.app import DashboardOptions, create_app

from ..conftest import drain

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def client_for(context: Context, **options: object) -> FlaskClient:
    """A test client of the dashboard on ``context``."""
    return create_app(context, DashboardOptions(**options)).test_client()  # type: ignore[arg-type]


def run_ids_in(html: str) -> list[str]:
    """The run ids a runs page lists, in order."""
    return re.findall(r'href="/runs/([0-9a-f]{32})"', html)


def test_the_runs_list_shows_live_and_stored_runs_newest_first_with_filters_and_pages(
    make_context: Callable[..., Context], database_url: str
) -> None:
    context = make_context("tests.graphs.failing", database_url=database_url)
    orchestrator = GraphOrchestrator(context=context)
    stored = []
    for _ in range(3):
        stored.append(orchestrator.submit("a"))
        time.sleep(0.002)  # distinct creation times
    drain(context)  # all three failed (c fails) and are in SQL
    live = orchestrator.submit("a")  # newest, queued in Redis
    client = client_for(context)

    page = client.get("/runs").get_data(as_text=True)
    assert run_ids_in(page) == [live, *reversed(stored)]
    assert "live" in page and "failed" in page and "queued" in page
    assert run_ids_in(client.get("/").get_data(as_text=True)) == run_ids_in(page)

    failed = client.get("/runs?status=failed").get_data(as_text=True)
    assert run_ids_in(failed) == list(reversed(stored))
    assert run_ids_in(client.get("/runs?status=queued").get_data(as_text=True)) == [live]
    assert run_ids_in(client.get("/runs?start=b").get_data(as_text=True)) == []
    assert len(run_ids_in(client.get("/runs?since=1h").get_data(as_text=True))) == 4

    first = client.get("/runs?limit=2").get_data(as_text=True)
    assert run_ids_in(first) == [live, stored[2]]
    older = re.search(r'rel="next" href="([^"]+)"', first)
    assert older is not None
    second = client.get(older.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert run_ids_in(second) == [stored[1], stored[0]]
    assert 'rel="next"' not in second

    found = client.get(f"/runs?run_id={stored[1][:10]}").get_data(as_text=True)
    assert run_ids_in(found) == [stored[1]]
    jump = client.get(f"/runs?run_id={stored[0]}")
    assert jump.status_code == 302 and jump.headers["Location"].endswith(f"/runs/{stored[0]}")
    bad = client.get("/runs?since=yesterday")
    assert bad.status_code == 400
    assert "expected a duration such as 30s" in bad.get_data(as_text=True)


def test_a_run_page_shows_its_graph_steps_errors_and_map_progress(
    make_context: Callable[..., Context],
) -> None:
    context = make_context("tests.graphs.failing")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a", {"detail": " with detail"})
    drain(context)
    page = client_for(context).get(f"/runs/{run_id}").get_data(as_text=True)
    assert "<svg" in page  # Graphviz drew the graph (CI installs it)
    assert 'fill="#ffebe9"' in page  # the failed node c, in its status's colour
    assert "ValueError: boom in c with detail" in page
    assert "Traceback" in page  # the failed step's traceback
    assert 'id="retry"' in page and 'id="cancel"' not in page  # a failed run: retry only

    mapped = make_context("tests.graphs.mapped")
    map_run = GraphOrchestrator(context=mapped).submit("m", {"items": [1, 2, 3]})
    drain(mapped)
    client = client_for(mapped)
    html = client.get(f"/runs/{map_run}").get_data(as_text=True)
    assert '<progress value="3" max="3">' in html and "\u00d73" in html  # x3
    status = client.get(f"/runs/{map_run}.json").get_json()
    assert status["maps"]["square"] == {"total": 3, "done": 3, "by_status": {"finished": 3}}
    assert status["nodes"] == {"m": "finished", "square": "finished", "collect": "finished"}


def test_a_live_run_s_json_names_its_pending_nodes(make_context: Callable[..., Context]) -> None:
    context = make_context("tests.graphs.chain")
    run_id = GraphOrchestrator(context=context).submit("a")
    status = client_for(context).get(f"/runs/{run_id}.json").get_json()
    assert status["status"] == "queued"
    assert status["nodes"] == {"a": "queued", "b": "pending"}


def test_cancel_and_retry_need_the_page_s_token_and_the_same_origin(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.chain")
    run_id = GraphOrchestrator(context=context).submit("a")
    client = client_for(context)
    page = client.get(f"/runs/{run_id}").get_data(as_text=True)
    token = TOKEN.search(page)
    assert token is not None and 'id="cancel"' in page

    assert client.post(f"/runs/{run_id}/cancel").status_code == 403  # no token
    forged = client.post(f"/runs/{run_id}/cancel", data={"csrf_token": "x" + token.group(1)})
    assert forged.status_code == 403
    cross = client.post(
        f"/runs/{run_id}/cancel",
        data={"csrf_token": token.group(1)},
        headers={"Origin": "http://evil.example"},
    )
    assert cross.status_code == 403
    other = client_for(context)  # another browser: the token is not its session's
    other.get("/runs")
    refused = other.post(f"/runs/{run_id}/cancel", data={"csrf_token": token.group(1)})
    assert refused.status_code == 403
    assert GraphOrchestrator(context=context).status(run_id)["status"] == "queued"

    done = client.post(
        f"/runs/{run_id}/cancel",
        data={"csrf_token": token.group(1)},
        headers={"Origin": "http://localhost"},
        follow_redirects=True,
    )
    assert done.status_code == 200 and "cancel: run is canceled" in done.get_data(as_text=True)
    assert GraphOrchestrator(context=context).status(run_id)["status"] == "canceled"
    assert redis_conn.llen("rq:queue:a") == 0

    again = client.post(
        f"/runs/{run_id}/retry", data={"csrf_token": token.group(1)}, follow_redirects=True
    )
    assert "only a failed run can be retried" in again.get_data(as_text=True)


def test_retry_from_the_page_resumes_a_failed_run(make_context: Callable[..., Context]) -> None:
    context = make_context("tests.graphs.failing")
    run_id = GraphOrchestrator(context=context).submit("a")
    drain(context)
    client = client_for(context)
    token = TOKEN.search(client.get(f"/runs/{run_id}").get_data(as_text=True))
    assert token is not None
    done = client.post(f"/runs/{run_id}/retry", data={"csrf_token": token.group(1)})
    assert done.status_code == 302
    assert GraphOrchestrator(context=context).status(run_id)["nodes"]["c"] == "queued"


def test_read_only_shows_no_buttons_and_refuses_every_change(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.chain")
    run_id = GraphOrchestrator(context=context).submit("a")
    client = client_for(context, read_only=True)
    page = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert "csrf_token" not in page and 'id="cancel"' not in page
    assert client.post(f"/runs/{run_id}/cancel").status_code == 403
    job = f"{run_id}-a"
    assert client.post(f"/rq/job/{job}/delete").status_code == 403  # rq-dashboard's too
    assert redis_conn.exists(f"rq:job:{job}")
    assert GraphOrchestrator(context=context).status(run_id)["status"] == "queued"


def test_basic_auth_guards_every_page_and_rq_dashboard_is_mounted(
    make_context: Callable[..., Context],
) -> None:
    context = make_context("tests.graphs.chain")
    client = client_for(context, username="ops", password="s3cret")
    for path in ("/runs", "/metrics", "/rq/", "/runs/x.json"):
        assert client.get(path).status_code == 401, path
    assert client.get("/healthz").status_code == 200  # healthchecks need no password
    wrong = {"Authorization": "Basic b3BzOndyb25n"}  # ops:wrong
    assert client.get("/runs", headers=wrong).status_code == 401
    right = {"Authorization": "Basic b3BzOnMzY3JldA=="}  # ops:s3cret
    assert client.get("/runs", headers=right).status_code == 200
    rq = client.get("/rq/", headers=right)
    assert rq.status_code == 200 and "RQ" in rq.get_data(as_text=True)
    queues = client.get("/rq/0/data/queues.json", headers=right).get_json()
    assert "queues" in queues


def test_a_run_page_shows_its_events_and_its_steps_progress(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.reporting")
    run_id = GraphOrchestrator(context=context).submit("work", {"text": "<b>hi</b>"})
    client = client_for(context)
    assert client.get(f"/runs/{run_id}.json").get_json()["events"] == 0
    drain(context)
    assert client.get(f"/runs/{run_id}.json").get_json()["events"] == 4  # the poll sees them
    html = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert '<progress class="step" value="3" max="3">' in html and "part 3" in html
    assert html.count('<tr class="event progress">') == 3
    assert '<tr class="event note">' in html and "&lt;b&gt;hi&lt;/b&gt;" in html  # escaped
    assert html.count('<tr class="event step">') == 4  # work and done: started, finished
    redis_conn.delete(*context.keys.run_keys(run_id))  # from SQL now
    stored = client.get(f"/runs/{run_id}/events.json").get_json()
    assert [e["type"] for e in stored] == ["step", *["progress"] * 3, "note", *["step"] * 3]
