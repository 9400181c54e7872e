"""GraphOrchestrator.wait wakes on the message a run publishes when it ends or is stopped,
not on its periodic status check (set here to longer than the test may take)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ezgraph import orchestrator as orchestrator_module
from ezgraph.orchestrator import GraphOrchestrator
from ezgraph.runtime import Runtime

from .conftest import drain

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

    def subscribed(self) -> None:
        """Block until the waiter's subscription is live, as a stop must come after it."""
        channel = self.orchestrator.runtime.book.stopped_channel(self.run_id).encode()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            counts = dict(self.orchestrator.runtime.connection.pubsub_numsub(channel))
            if counts.get(channel):
                return
            time.sleep(0.01)
        raise AssertionError("wait() never subscribed")


@pytest.fixture(autouse=True)
def no_periodic_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orchestrator_module, "WAIT_RECHECK", WAIT_TIMEOUT)


def test_wait_returns_when_the_run_ends(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime("tests.graphs.chain")
    orchestrator = GraphOrchestrator(runtime=runtime)
    run_id = orchestrator.submit("a")
    waiter = Waiter(orchestrator, run_id)
    waiter.start()
    waiter.subscribed()
    drain(runtime)
    ended = time.monotonic()
    waiter.join(WAIT_TIMEOUT + 10)
    assert waiter.status["status"] == "finished"
    assert waiter.returned_at - ended < WOKEN_WITHIN


def test_wait_returns_when_the_run_is_canceled(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime("tests.graphs.chain")
    orchestrator = GraphOrchestrator(runtime=runtime)
    run_id = orchestrator.submit("a")
    waiter = Waiter(GraphOrchestrator(runtime=runtime), run_id)
    waiter.start()
    waiter.subscribed()
    orchestrator.cancel(run_id)
    canceled = time.monotonic()
    waiter.join(WAIT_TIMEOUT + 10)
    assert waiter.status["status"] == "canceled"
    assert waiter.returned_at - canceled < WOKEN_WITHIN


def test_waits_one_after_another_reuse_the_connection(
    make_runtime: Callable[..., Runtime],
) -> None:
    """A second wait on the same orchestrator hears its own run, not the first one's channel."""
    runtime = make_runtime("tests.graphs.chain")
    orchestrator = GraphOrchestrator(runtime=runtime)
    first = orchestrator.submit("a")
    drain(runtime)
    assert orchestrator.wait(first, timeout=5)["status"] == "finished"
    second = orchestrator.submit("a")
    waiter = Waiter(orchestrator, second)
    waiter.start()
    waiter.subscribed()
    drain(runtime)
    ended = time.monotonic()
    waiter.join(WAIT_TIMEOUT + 10)
    assert waiter.status["status"] == "finished"
    assert waiter.returned_at - ended < WOKEN_WITHIN
