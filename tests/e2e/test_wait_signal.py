"""Wait for a signal: a step that returns ``ezgraph.Wait`` pauses its run without a worker, and
``signal`` resumes it through the one completion path, whether it came before or after."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from redis import Redis

from ezgraph import recovery
from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.errors import InvalidRunOperation, RunNotFound, UsageError
from ezgraph.state.protocol import WaitRecord

from ..conftest import (
    ROOT,
    drain,
    ezgraph_cli,
    simple_worker_burst,
    subprocess_env,
    wait_for,
)

WAITING = "tests.graphs.waiting"  # ask -> gate (waits for "approval"), side -> j
LEDGER = "ledger:wait-signal"


def gate_calls(redis_conn: Redis, run_id: str) -> int:
    return redis_conn.lrange(LEDGER, 0, -1).count(f"{run_id}:gate".encode())


def test_a_waiting_step_holds_no_worker_and_its_signal_reaches_the_successors(
    make_context: Callable[..., Context], redis_conn: Redis, redis_url: str
) -> None:
    context = make_context(WAITING)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("ask", ledger_url=redis_url, ledger_key=LEDGER)
    drain(context)  # returns: nothing is left to run while the gate waits
    status = orchestrator.status(run_id)
    assert status["status"] == "running"
    assert status["nodes"] == {"ask": "finished", "gate": "waiting", "side": "finished"}
    gate = next(s for s in status["steps"] if s["step"] == "gate")
    assert gate["waiting_for"] == "approval"
    shown = ezgraph_cli("status", run_id, env=subprocess_env(context.settings))
    assert "waiting (for signal 'approval')" in shown.stdout, shown.stdout
    why = ezgraph_cli("diagnose", run_id, env=subprocess_env(context.settings))
    assert f"step gate waits for signal 'approval' (ezgraph signal {run_id} approval" in why.stdout
    assert "join j waits for gate (side arrived)" in why.stdout, why.stdout

    after = orchestrator.signal(run_id, "approval", {"by": "ann"})
    assert after["nodes"]["gate"] == "finished"
    drain(context)
    final = orchestrator.status(run_id)
    assert final["status"] == "finished", final
    assert final["result"]["approval"] == {"by": "ann"} and final["result"]["asked"] == "ok?"
    assert final["result"]["trail"][-1] == "j"
    assert gate_calls(redis_conn, run_id) == 1  # resuming never runs the module again
    stored = context.store.load_run(run_id)
    assert stored is not None and stored.status == "finished"


def test_a_signal_sent_before_the_step_waits_is_kept_and_ends_the_wait_at_once(
    make_context: Callable[..., Context], redis_conn: Redis, redis_url: str
) -> None:
    context = make_context(WAITING)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("ask", ledger_url=redis_url, ledger_key=LEDGER)
    orchestrator.signal(run_id, "approval", [1, 2])  # nothing waits yet: kept in the mailbox
    drain(context)
    final = orchestrator.status(run_id)
    assert final["status"] == "finished", final
    assert final["result"]["approval"] == [1, 2]
    assert gate_calls(redis_conn, run_id) == 1


def test_signals_refused_one_line_each(make_context: Callable[..., Context]) -> None:
    context = make_context(WAITING)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("ask")
    orchestrator.signal(run_id, "later", 1)  # no step waits for it (yet): kept
    with pytest.raises(InvalidRunOperation, match="already got signal 'later'"):
        orchestrator.signal(run_id, "later", 2)
    with pytest.raises(UsageError, match="identifier"):
        orchestrator.signal(run_id, "not a name", 2)
    with pytest.raises(RunNotFound):
        orchestrator.signal("0" * 32, "approval")
    orchestrator.signal(run_id, "approval")
    drain(context)
    assert orchestrator.status(run_id)["status"] == "finished"
    with pytest.raises(InvalidRunOperation, match=f"run {run_id} is finished"):
        orchestrator.signal(run_id, "other")


def test_a_wait_past_its_timeout_fails_the_run_naming_the_wait(
    make_context: Callable[..., Context],
) -> None:
    context = make_context(WAITING)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("ask", wait_timeout=0.2)
    drain(context)
    assert orchestrator.status(run_id)["nodes"]["gate"] == "waiting"
    recovery.watch_waits(context, lambda _: None, recovery.Report())  # not due yet
    assert orchestrator.status(run_id)["status"] == "running"
    time.sleep(0.3)
    ended: list[str] = []
    recovery.watch_waits(context, ended.append, recovery.Report())
    status = orchestrator.status(run_id)
    assert status["status"] == "failed" and ended == [run_id]
    assert status["error"] == "gate: timed out waiting for signal 'approval'"
    with pytest.raises(InvalidRunOperation, match="is failed"):
        orchestrator.signal(run_id, "approval")


def test_a_signal_whose_sender_died_is_resumed_by_the_watchdog_once(
    make_context: Callable[..., Context], redis_conn: Redis, redis_url: str
) -> None:
    context = make_context(WAITING)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("ask", ledger_url=redis_url, ledger_key=LEDGER)
    drain(context)
    env = subprocess_env(context.settings, EZGRAPH_CRASH_AT="after_signal:gate")
    sent = ezgraph_cli("signal", run_id, "approval", "--data", '"yes"', env=env)
    assert sent.returncode == 137, sent.stderr  # died after keeping the signal
    assert orchestrator.status(run_id)["nodes"]["gate"] == "waiting"
    redis_conn.zadd(context.keys.waiting_steps, {f"{run_id} gate": 0})  # its grace is over
    for _ in range(2):  # a second pass finds nothing to do
        recovery.watch_waits(context, lambda _: None, recovery.Report())
    drain(context)
    final = orchestrator.status(run_id)
    assert final["status"] == "finished" and final["result"]["approval"] == "yes"
    assert final["result"]["trail"].count("j") == 1
    assert gate_calls(redis_conn, run_id) == 1


def test_canceling_a_waiting_run_ends_it(make_context: Callable[..., Context]) -> None:
    context = make_context(WAITING)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("ask")
    drain(context)
    status = orchestrator.cancel(run_id)
    assert status["status"] == "canceled" and status["nodes"]["gate"] == "canceled"
    stored = context.store.load_run(run_id)
    assert stored is not None and stored.status == "canceled"


def test_two_steps_cannot_wait_for_one_name(make_context: Callable[..., Context]) -> None:
    context = make_context(WAITING)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("ask")
    drain(context)  # the gate waits for "approval"
    other = WaitRecord(run_id, "ghost", "approval", "", "{}", "{}", "", "w", 1)
    assert context.runs.wait_step(other) == ("taken", "gate")


def test_a_stock_rq_worker_waits_and_resumes_too(
    make_context: Callable[..., Context],
    redis_conn: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    context = make_context(WAITING)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("ask")
    queues = ["ask", "gate", "side", "j"]
    simple_worker_burst(context, redis_conn, monkeypatch, queues)
    assert orchestrator.status(run_id)["nodes"]["gate"] == "waiting"
    assert redis_conn.hget(f"rq:job:{run_id}-gate", "status") == b"finished"
    sent = ezgraph_cli(
        "signal", run_id, "approval", "--data", '{"ok": 1}', env=subprocess_env(context.settings)
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == f"run {run_id}: running (signal 'approval' sent)"
    simple_worker_burst(context, redis_conn, monkeypatch, queues)
    final = orchestrator.status(run_id)
    assert final["status"] == "finished" and final["result"]["approval"] == {"ok": 1}


def test_a_sender_killed_after_resuming_leaves_the_run_going_once(
    make_context: Callable[..., Context], redis_conn: Redis, redis_url: str
) -> None:
    context = make_context(WAITING)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("ask", ledger_url=redis_url, ledger_key=LEDGER)
    drain(context)
    env = subprocess_env(context.settings, EZGRAPH_CRASH_AT="after_record:gate")
    sent = ezgraph_cli("signal", run_id, "approval", env=env)
    assert sent.returncode == 137, sent.stderr  # died after the gate's completion was recorded
    assert orchestrator.status(run_id)["nodes"]["gate"] == "finished"
    redis_conn.zadd(context.keys.waiting_steps, {f"{run_id} gate": 0})
    recovery.watch_waits(context, lambda _: None, recovery.Report())  # finds it done: forgets it
    assert redis_conn.zcard(context.keys.waiting_steps) == 0
    drain(context)
    final = orchestrator.status(run_id)
    assert final["status"] == "finished" and final["result"]["approval"] is None
    assert final["result"]["trail"].count("j") == 1 and gate_calls(redis_conn, run_id) == 1


def launch(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after_module:gate", "after_wait:gate"])
def test_a_worker_killed_around_the_wait_resumes_the_run_once(
    make_context: Callable[..., Context], redis_conn: Redis, redis_url: str, point: str
) -> None:
    context = make_context(WAITING)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("ask", ledger_url=redis_url, ledger_key=LEDGER)
    env = subprocess_env(context.settings)
    doomed = launch(["ezgraph", "worker"], {**env, "EZGRAPH_CRASH_AT": point})
    try:
        assert doomed.wait(timeout=60) == 137, "the worker did not die at the crash point"
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait()
    rescuer = launch(["ezgraph", "worker"], env)
    try:
        wait_for(
            lambda: (
                orchestrator.status(run_id)["nodes"]["gate"] == "waiting"
                and gate_calls(redis_conn, run_id) == 2
            ),  # its claim given back, run again
            40,
            "the gate to wait again",
        )
        orchestrator.signal(run_id, "approval", "go")
        wait_for(lambda: context.store.load_run(run_id) is not None, 40, "the run stored")
    finally:
        rescuer.terminate()
        rescuer.wait(30)
    final = orchestrator.status(run_id)
    assert final["status"] == "finished" and final["result"]["approval"] == "go"
    assert final["result"]["trail"].count("j") == 1
    assert gate_calls(redis_conn, run_id) == 2
