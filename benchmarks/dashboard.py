"""The dashboard's speed at scale: its pages and ``/metrics`` over 100,000 runs in SQL.

    python -m benchmarks --dashboard                 # 100,000 runs in SQLite
    python -m benchmarks --dashboard --dashboard-runs 20000 --dashboard-db postgresql+psycopg2://...

It fills a fresh database with finished, failed and canceled runs of a two-node graph spread
over a month (through the store, as the hand-over writes them), then times each page through
the dashboard's Flask app in process (the test client: routing, queries, templates, no
network), the median and the worst of ``--dashboard-reps`` requests. Figures only: no
threshold is asserted anywhere.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from redis import Redis

from ezgraph.context import Context
from ezgraph.model.records import RunRecord, RunStatus, StepRecord, StepStatus
from ezgraph.settings import Settings
from ezgraph.state.sql import Store, dispose_engines
from ezgraph.web.app import DashboardOptions, create_app

GRAPH = "tests.graphs.chain"  # a -> b
STATUSES = (RunStatus.FINISHED,) * 8 + (RunStatus.FAILED, RunStatus.CANCELED)


def fill(store: Store, runs: int, batch: int = 2_000) -> list[str]:
    """Write ``runs`` ended runs of a -> b to ``store``, newest last; returns their ids."""
    start = datetime.now(UTC) - timedelta(days=30)
    spacing = timedelta(days=30) / runs
    ids = []
    for first in range(0, runs, batch):
        records = []
        for n in range(first, min(first + batch, runs)):
            run_id = uuid.uuid4().hex
            created = start + spacing * n
            records.append(_record(run_id, created, STATUSES[n % len(STATUSES)], n))
            ids.append(run_id)
        store.save_runs(records)
    return ids


def _record(run_id: str, created: datetime, status: RunStatus, n: int) -> RunRecord:
    """A run of a -> b that ended ``status`` (b failed or was canceled unless finished)."""
    ok = status == RunStatus.FINISHED
    error = None if ok else "b: ValueError: boom"
    at = [created + timedelta(milliseconds=ms) for ms in (0, 3, 4, 9, 10)]
    steps = (
        StepRecord("a", "a", None, StepStatus.FINISHED, 1, None, {"a": True}, None, at[0], at[1]),
        StepRecord(
            "b", "b", None, StepStatus(str(status)), 1, None, {"b": True} if ok else None,
            error, at[2], at[3],
        ),
    )  # fmt: skip
    result = {"b": True} if ok else None
    return RunRecord(run_id, GRAPH, "a", status, {"n": n}, result, error, at[0], at[4], steps)


def timed(request: Callable[[], int], reps: int) -> tuple[float, float]:
    """Median and worst milliseconds of ``reps`` calls of ``request`` (each must answer 200)."""
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        status = request()
        times.append((time.perf_counter() - began) * 1000)
        if status != 200:
            raise RuntimeError(f"the page answered {status}")
    return statistics.median(times), max(times)


def measure(redis_url: str, runs: int, reps: int, database_url: str | None = None) -> list[str]:
    """Fill a database with ``runs`` runs and time the dashboard's pages; returns the table's
    lines."""
    with tempfile.TemporaryDirectory() as folder:
        url = database_url or f"sqlite:///{Path(folder) / 'dashboard.db'}"
        settings = Settings(redis_url=redis_url, database_url=url, modules_package=GRAPH)
        connection = Redis.from_url(redis_url)
        connection.flushdb()
        context = Context(settings, connection)
        began = time.monotonic()
        ids = fill(context.store, runs)
        filled = time.monotonic() - began
        client = create_app(context, DashboardOptions(read_only=True)).test_client()
        middle = ids[len(ids) // 2]
        pages = {
            "/runs (newest 50)": "/runs",
            "/runs?status=failed": "/runs?status=failed",
            "/runs?start=a&since=7d": "/runs?start=a&since=7d",
            "/runs, a page deep in the list": "/runs?after=" + _cursor_near(client, middle),
            "/runs?run_id=<8-char prefix>": f"/runs?run_id={middle[:8]}",
            "/runs/<id> (a run from SQL)": f"/runs/{middle}",
            "/runs/<id>.json (the run page's poll)": f"/runs/{middle}.json",
            "/metrics": "/metrics",
        }
        lines = [f"dashboard, {runs:,} runs in {url.split(':')[0]} (filled in {filled:.0f} s)"]
        lines.append(f"{'page':<44} {'p50 ms':>8} {'max ms':>8}")
        for name, path in pages.items():
            median, worst = timed(lambda path=path: client.get(path).status_code, reps)
            lines.append(f"{name:<44} {median:>8.1f} {worst:>8.1f}")
        connection.flushdb()
        dispose_engines()
        return lines


def _cursor_near(client: object, run_id: str) -> str:
    """The cursor of the page that starts after ``run_id`` (read from the run's JSON)."""
    data = client.get(f"/runs/{run_id}.json").get_json()  # type: ignore[attr-defined]
    created = datetime.fromisoformat(data["created_at"])
    return f"{int(created.timestamp() * 1_000_000)}_{run_id}"
