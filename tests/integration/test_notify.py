"""FLOW_ORCHESTRATION_URL: each ended run, once in SQL, POSTed at least once to a real receiver."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ezgraph.cli.runs import notification_line
from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.notify import Notifier, backoff
from ezgraph.settings import TUNING

from ..conftest import drain, free_port, wait_for
from .test_metrics import scrape, value

PACKAGE = "tests.graphs.chain"
# Short waits, so a test sees retries in a fraction of a second.
FAST = dataclasses.replace(
    TUNING,
    notify_every=0.05,
    notify_retries=3,
    notify_backoff=0.01,
    notify_later=0.2,
    notify_later_max=0.4,
    notify_timeout=2.0,
)


class Receiver:
    """An HTTP server on 127.0.0.1 that answers ``failures`` then 200, and keeps what came."""

    def __init__(self, failures: list[int] | None = None, port: int = 0) -> None:
        self.failures = list(failures or [])
        self.requests: list[tuple[int, dict[str, str], dict[str, Any]]] = []  # answer, headers
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    status = receiver.failures.pop(0) if receiver.failures else 200
                    receiver.requests.append((status, dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"no")

            def log_message(self, *args: Any) -> None:
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/runs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> dict[str, int]:
        """Run id -> POSTs answered 200."""
        counts: dict[str, int] = {}
        for status, _headers, body in self.requests:
            if status == 200:
                counts[body["run_id"]] = counts.get(body["run_id"], 0) + 1
        return counts

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(failures: list[int] | None = None, port: int = 0) -> Receiver:
        made.append(Receiver(failures, port))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def submit_runs(context: Context, count: int) -> list[str]:
    orchestrator = GraphOrchestrator(context=context)
    return [orchestrator.submit("a", {"trail": []}) for _ in range(count)]


def test_runs_are_posted_once_each_after_the_receiver_failed_first(
    make_context: Callable[..., Context], receiver_factory: Callable[..., Receiver]
) -> None:
    # 5 failures: the first attempt's POST and its 3 retries fail, the next attempt's first
    # POST fails and its retry is taken.
    receiver = receiver_factory([503] * 5)
    context = make_context(PACKAGE, FAST, notify_url=receiver.url)
    run_ids = submit_runs(context, 3)

    drain(context)  # a real ezgraph worker: it runs the steps, writes the runs, notifies

    for run_id in run_ids:  # the runs are in SQL whatever the receiver does
        assert context.store.load_run(run_id).status == "finished"  # type: ignore[union-attr]
    notifier = Notifier(context, receiver.url)  # another worker's, started later
    notifier.start()
    try:
        wait_for(lambda: len(receiver.accepted()) == 3, 10, "every run to be accepted")
    finally:
        notifier.stop()
    assert receiver.accepted() == dict.fromkeys(run_ids, 1)
    assert [status for status, _, _ in receiver.requests] == [503] * 5 + [200] * 3
    states = {run_id: context.notifications.of(run_id) for run_id in run_ids}
    assert {n.state for n in states.values() if n} == {"delivered"}
    assert sorted(n.attempts for n in states.values() if n) == [1, 1, 2]
    first = next(n for n in states.values() if n and n.attempts == 2)
    assert first.last_error is None and first.delivered_at is not None

    _status, headers, body = receiver.requests[-1]
    record = context.store.load_run(body["run_id"])
    assert record is not None
    assert body["event"] == "run.ended"
    assert body["status"] == "finished" and body["error"] is None
    assert body["result"] == record.result
    assert [(s["step"], s["status"]) for s in body["steps"]] == [
        ("a", "finished"),
        ("b", "finished"),
    ]
    assert all(s["started_at"] and s["ended_at"] for s in body["steps"])
    assert headers["Content-Type"] == "application/json"
    assert headers["Idempotency-Key"] == f"{record.run_id}:{record.ended_at.isoformat()}"  # type: ignore[union-attr]


def test_a_receiver_that_is_down_leaves_runs_in_sql_and_pending_until_it_is_up(
    make_context: Callable[..., Context], receiver_factory: Callable[..., Receiver]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/runs"
    context = make_context(PACKAGE, FAST, notify_url=url)
    run_ids = submit_runs(context, 2)
    drain(context)  # its notifier finds nobody listening: the first run waits, and the others

    notifications = [context.notifications.of(run_id) for run_id in run_ids]
    assert all(n is not None and n.state == "pending" for n in notifications)
    failed = [n for n in notifications if n and n.attempts]
    assert len(failed) == 1 and "refused" in (failed[0].last_error or "").lower()
    assert failed[0].next_attempt_at.replace(tzinfo=UTC) > datetime.now(UTC)
    assert [context.store.load_run(r).status for r in run_ids] == ["finished"] * 2  # type: ignore[union-attr]

    receiver = receiver_factory(port=port)
    notifier = Notifier(context, url)
    notifier.start()
    try:
        wait_for(lambda: len(receiver.accepted()) == 2, 10, "both runs to be accepted")
    finally:
        notifier.stop()
    assert receiver.accepted() == dict.fromkeys(run_ids, 1)


def test_a_refusal_fails_the_notification_without_sending_it_again(
    make_context: Callable[..., Context], receiver_factory: Callable[..., Receiver]
) -> None:
    receiver = receiver_factory([400])
    context = make_context(PACKAGE, FAST, notify_url=receiver.url)
    [run_id] = submit_runs(context, 1)
    drain(context)
    Notifier(context, receiver.url).send_due()

    notification = context.notifications.of(run_id)
    assert notification is not None and notification.state == "failed"
    assert notification.last_error == "HTTP 400: no" and notification.attempts == 1
    assert len(receiver.requests) == 1
    assert context.notifications.counts() == {"failed": 1}
    samples = scrape(context)
    assert value(samples, "ezgraph_notifications", state="failed") == 1
    assert value(samples, "ezgraph_notifications", state="delivered") is None
    assert notification_line(context, run_id) == "notification: failed (1 attempt): HTTP 400: no"


def test_a_run_written_again_is_not_told_again_but_a_run_that_ends_again_is(
    make_context: Callable[..., Context],
    receiver_factory: Callable[..., Receiver],
    database_url: str,
) -> None:
    receiver = receiver_factory()
    context = make_context(PACKAGE, FAST, notify_url=receiver.url, database_url=database_url)
    [run_id] = submit_runs(context, 1)
    drain(context)  # its notifier sends it
    assert context.notifications.of(run_id).state == "delivered"  # type: ignore[union-attr]

    record = context.store.load_run(run_id)
    assert record is not None
    context.store.save_runs([record], context.notifications.pending_for([record]))  # again
    assert context.notifications.of(run_id).state == "delivered"  # type: ignore[union-attr]

    ended_again = dataclasses.replace(record, ended_at=record.ended_at + timedelta(seconds=5))  # type: ignore[operator]
    context.store.save_runs([ended_again], context.notifications.pending_for([ended_again]))
    assert context.notifications.of(run_id).state == "pending"  # type: ignore[union-attr]
    Notifier(context, receiver.url).send_due()
    assert receiver.accepted() == {run_id: 2}


def test_a_notification_whose_notifier_died_is_sent_by_another_once_its_lease_ends(
    make_context: Callable[..., Context],
    receiver_factory: Callable[..., Receiver],
    database_url: str,
) -> None:
    receiver = receiver_factory()
    context = make_context(PACKAGE, FAST, database_url=database_url)
    [run_id] = submit_runs(context, 1)
    drain(context)  # no URL here: the run is written without a notification, added below
    record = context.store.load_run(run_id)
    assert record is not None
    context.store.save_runs([record], context.notifications.pending_for([record]))
    notifications = context.notifications
    [(due_id, seen, _attempts)] = notifications.due(datetime.now(UTC), 10)
    lease = datetime.now(UTC) + timedelta(seconds=0.3)
    assert notifications.take(due_id, seen, lease)  # a notifier took it, then died
    assert not notifications.take(due_id, seen, lease)  # nobody else takes it meanwhile

    other = Notifier(context, receiver.url)
    assert other.send_due() == 0 and receiver.requests == []
    time.sleep(0.35)
    assert other.send_due() == 1
    assert receiver.accepted() == {run_id: 1}
    assert not notifications.settle(run_id, lease, None, None)  # the dead one's lease is gone


def test_without_the_url_no_notification_is_written(
    make_context: Callable[..., Context],
) -> None:
    context = make_context(PACKAGE, FAST)
    submit_runs(context, 2)
    drain(context)
    assert context.store.count_runs() == 2
    assert context.notifications.counts() == {}


def test_the_wait_after_failed_attempts_grows_to_its_bound() -> None:
    waits = [backoff(TUNING, attempts) for attempts in (1, 2, 3, 10)]
    assert TUNING.notify_later <= waits[0] <= TUNING.notify_later + 1
    assert waits[0] < waits[1] < waits[2]
    assert waits[3] == TUNING.notify_later_max
