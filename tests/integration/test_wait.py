"""GraphOrchestrator.wait wakes on the message a run publishes when it ends or is stopped,
not on its periodic status check (set here to longer than the test may take)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.settings import TUNING

from ..conftest import drain, wait_for

WAIT_TIMEOUT = 60.0  # far longer than any step here: only the message returns wait() early
WOKEN_WITHIN = 20.0  # seconds after the run ends; generous, the message takes milliseconds


class Waiter(threading.Thread):
    """``orchestrator.wait(run_id)`` in a thread, noting what it returned and when."""

    def __init__(self, orchestrator: GraphOrchestrator, run_id: str) -> None:
        super().__init__(daemon=True)
        self.orchestrator, self.run_id = orchestrator, run_id
        self.status: dict[str, Any] = {}
        self.returned_at = 0.0

    def run(self) -> None:
        self.status = self.orchestrator.wait(self.run_id, timeout=WAIT_TIMEOUT)
        self.returned_at = time.monotonic()


def wait_through(orchestrator: GraphOrchestrator, run_id: str, stop: Callable[[], Any]) -> str:
    """Start ``orchestrator.wait(run_id)`` in a thread, ``stop`` the run once the wait has
    subscribed, and return the status the wait returned, checking it woke on the message."""
    waiter = Waiter(orchestrator, run_id)
    waiter.start()
    channel = orchestrator.context.keys.stopped(run_id).encode()
    connection = orchestrator.context.connection
    wait_for(
        lambda: bool(dict(connection.pubsub_numsub(channel)).get(channel)), 10, "the subscription"
    )
    stop()
    stopped = time.monotonic()
    waiter.join(WAIT_TIMEOUT + 10)
    assert waiter.returned_at - stopped < WOKEN_WITHIN
    return str(waiter.status["status"])


@pytest.fixture
def make_context(make_context: Callable[..., Context]) -> Callable[..., Context]:
    """Contexts whose wait() reads the status only when a message wakes it."""
    tuning = dataclasses.replace(TUNING, wait_recheck=WAIT_TIMEOUT)
    return lambda package, **overrides: make_context(package, tuning=tuning, **overrides)


def test_wait_returns_when_the_run_ends(make_context: Callable[..., Context]) -> None:
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a")
    assert wait_through(orchestrator, run_id, lambda: drain(context)) == "finished"


def test_wait_returns_when_the_run_is_canceled(make_context: Callable[..., Context]) -> None:
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a")
    waiting = GraphOrchestrator(context=context)
    assert wait_through(waiting, run_id, lambda: orchestrator.cancel(run_id)) == "canceled"


def test_waits_one_after_another_reuse_the_connection(
    make_context: Callable[..., Context],
) -> None:
    """A second wait on the same orchestrator hears its own run, not the first one's channel."""
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    first = orchestrator.submit("a")
    drain(context)
    assert orchestrator.wait(first, timeout=5)["status"] == "finished"
    second = orchestrator.submit("a")
    assert wait_through(orchestrator, second, lambda: drain(context)) == "finished"
