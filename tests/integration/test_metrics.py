"""``/metrics``: scraped from the dashboard and checked against runs whose outcome is known."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from ezgraph import recovery
from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.web.app import create_app

from ..conftest import drain

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(context: Context) -> Samples:
    """Every sample ``/metrics`` gives, by name and sorted labels."""
    response = create_app(context).test_client().get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=")  # the text format
    samples: Samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample ``name{labels}``, or None."""
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_count_known_runs_steps_durations_queues_and_live_runs(
    make_context: Callable[..., Context], database_url: str
) -> None:
    chain = make_context("tests.graphs.chain", database_url=database_url)
    failing = make_context("tests.graphs.failing", database_url=database_url)
    for _ in range(2):
        GraphOrchestrator(context=chain).submit("a")
    GraphOrchestrator(context=failing).submit("a")
    drain(failing)  # serves a, b, c, d of both graphs' queues: 2 finished chains, 1 failed run
    live = GraphOrchestrator(context=chain).submit("a")  # queued, not run

    samples = scrape(chain)
    assert value(samples, "ezgraph_database_up") == 1
    assert value(samples, "ezgraph_redis_up") == 1
    assert value(samples, "ezgraph_runs_total", start="a", status="finished") == 2
    assert value(samples, "ezgraph_runs_total", start="a", status="failed") == 1
    assert value(samples, "ezgraph_steps_total", node="c", status="failed") == 1
    assert value(samples, "ezgraph_steps_total", node="a", status="finished") == 3
    assert chain.store.load_run(live) is None  # not in SQL: counted as live only
    assert value(samples, "ezgraph_live_runs") == 1
    assert value(samples, "ezgraph_runs_waiting_for_sql") == 0
    assert value(samples, "ezgraph_queue_depth", node="a") == 1
    assert value(samples, "ezgraph_queue_depth", node="b") == 0
    assert value(samples, "rq_jobs", queue="a", status="queued") == 1
    assert value(samples, "rq_jobs", queue="a", status="finished") == 3
    assert value(samples, "rq_jobs", queue="c", status="failed") == 1
    # Every a step ran in well under 5 s: all in the 5 s bucket, counted once each.
    assert value(samples, "ezgraph_step_duration_seconds_count", node="a") == 3
    assert value(samples, "ezgraph_step_duration_seconds_bucket", node="a", le="300.0") == 3
    assert value(samples, "ezgraph_step_duration_seconds_bucket", node="a", le="+Inf") == 3
    total = value(samples, "ezgraph_step_duration_seconds_sum", node="a")
    assert total is not None and 0 <= total < 5


def test_a_step_recovery_shows_while_its_run_is_live(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.chain")
    run_id = GraphOrchestrator(context=context).submit("a")
    redis_conn.lrem("rq:queue:a", 1, f"{run_id}-a")  # lost, as a killed stock worker's pop
    assert value(scrape(context), "ezgraph_live_step_recoveries", node="a") is None
    redis_conn.zadd(context.keys.live_runs, {run_id: time.time() - 60})  # past the grace
    ended: list[str] = []
    recovery.watch_runs(context, ended.append)  # first look: suspected
    time.sleep(context.tuning.grace + 0.2)
    report = recovery.watch_runs(context, ended.append)
    assert report.requeued == [f"{run_id}-a"]
    assert value(scrape(context), "ezgraph_live_step_recoveries", node="a") == 1


def test_the_database_being_down_is_a_metric_not_a_failed_scrape(
    make_context: Callable[..., Context],
) -> None:
    context = make_context(
        "tests.graphs.chain", database_url="postgresql+psycopg2://u:pw@127.0.0.1:1/none"
    )
    GraphOrchestrator(context=context).submit("a")
    samples = scrape(context)
    assert value(samples, "ezgraph_database_up") == 0
    assert value(samples, "ezgraph_live_runs") == 1
    assert not any(name == "ezgraph_runs_total" for name, _ in samples)
