"""The operators' commands as a user runs them: runs, status (pending nodes, --watch),
submit's warning and --wait, viz of a run and to an image, diagnose, metrics, dashboard, top,
procfile and the help summaries."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context

from ..conftest import drain, ezgraph_cli, ezgraph_process, subprocess_env, wait_for

NO_WORKER = "warning: no live worker serves queue 'a': the run waits until one starts"


def stop(process: subprocess.Popen[str]) -> str:
    """Stop a background command (SIGTERM) and return its stderr (its pipes closed)."""
    process.terminate()
    return process.communicate(timeout=15)[1] or ""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_runs_lists_newest_first_with_status_since_and_limit(
    make_context: Callable[..., Context],
) -> None:
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    done = [orchestrator.submit("a") for _ in range(3)]
    drain(context)
    queued = orchestrator.submit("a")
    env = subprocess_env(context.settings)
    listed = ezgraph_cli("runs", env=env)
    assert listed.returncode == 0, listed.stderr
    ids = [line.split()[0] for line in listed.stdout.splitlines()]
    assert ids[0] == queued and set(ids[1:]) == set(done)
    finished = ezgraph_cli("runs", "--status", "finished", "--since", "1h", "-n", "2", env=env)
    assert len(finished.stdout.splitlines()) == 2
    assert all(" finished " in line for line in finished.stdout.splitlines())
    rows = [json.loads(line) for line in ezgraph_cli("runs", "--json", env=env).stdout.splitlines()]
    assert rows[0]["run_id"] == queued and rows[0]["status"] == "queued"
    bad = ezgraph_cli("runs", "--since", "soon", env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --since 'soon': expected")


def test_status_shows_pending_nodes_and_submit_warns_when_no_worker_serves_the_start(
    make_context: Callable[..., Context],
) -> None:
    context = make_context("tests.graphs.chain")
    env = subprocess_env(context.settings)
    submitted = ezgraph_cli("submit", "a", env=env)
    assert submitted.returncode == 0
    assert submitted.stderr.startswith(NO_WORKER), submitted.stderr
    run_id = submitted.stdout.strip()
    lines = ezgraph_cli("status", run_id, env=env).stdout.splitlines()
    assert lines[0] == f"run {run_id}: queued"
    assert [line.split() for line in lines[1:]] == [["a", "queued"], ["b", "pending"]]


def test_submit_wait_and_status_watch_follow_a_run_line_by_line_off_a_terminal(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.slowchain")
    env = subprocess_env(context.settings)
    worker = ezgraph_process("worker", env=env)
    try:
        wait_for(lambda: bool(redis_conn.smembers(context.keys.workers)), 30, "the worker")
        payload = json.dumps({"sleep": 0.3, "ledger_url": env["REDIS_URL"], "ledger_key": "l"})
        done = ezgraph_cli("submit", "a", "--data", payload, "--wait", env=env)
        assert done.returncode == 0, done.stderr
        assert "warning" not in done.stderr  # a live worker serves a
        assert "c: finished" in done.stderr.splitlines()  # the progress went to stderr
        assert json.loads("\n".join(done.stdout.splitlines()[:-1]))["c"] > 0  # stdout: result
        slower = payload.replace('"sleep": 0.3', '"sleep": 1.0')  # outlasts a start-up
        watching = ezgraph_process("submit", "a", "--data", slower, env=env, stdout=subprocess.PIPE)
        run_id = watching.communicate(timeout=30)[0].strip()  # closes its pipes
        watched = ezgraph_cli("status", run_id, "--watch", env=env)
    finally:
        stop(worker)
    assert watched.returncode == 0, watched.stderr
    lines = watched.stdout.splitlines()
    assert lines[:3] == ["a: queued", "b: pending", "c: pending"] or lines[0].startswith("a: ")
    assert lines.index("b: running") < lines.index("b: finished") < lines.index("c: finished"), (
        lines
    )
    assert lines[-1].startswith("result: ")


def test_viz_colours_a_run_and_draws_images_or_says_how_to_get_graphviz(
    make_context: Callable[..., Context], tmp_path: Path
) -> None:
    context = make_context("tests.graphs.failing")
    run_id = GraphOrchestrator(context=context).submit("a")
    drain(context)
    env = subprocess_env(context.settings)
    text = ezgraph_cli("viz", run_id, env=env).stdout
    assert "c [failed] -> d" in text and "d (join) [not run]" in text
    mermaid = ezgraph_cli("viz", run_id, "--format", "mermaid", env=env).stdout
    assert "class c failed" in mermaid and "classDef failed fill:#ffebe9" in mermaid
    if not Path("/usr/bin/dot").exists() and not any(
        (Path(p) / "dot").exists() for p in os.environ.get("PATH", "").split(os.pathsep)
    ):
        pytest.skip("Graphviz is not installed (apt-get install graphviz)")
    svg = tmp_path / "run.svg"
    drawn = ezgraph_cli("viz", run_id, "-o", str(svg), env=env)
    assert drawn.returncode == 0, drawn.stderr
    assert svg.read_text().count("<svg") == 1 and 'fill="#ffebe9"' in svg.read_text()
    png = tmp_path / "graph.png"
    assert ezgraph_cli("viz", "-o", str(png), env=env).returncode == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bare = ezgraph_cli("viz", "-o", str(tmp_path / "g.svg"), env={**env, "PATH": str(tmp_path)})
    assert bare.returncode == 1
    assert bare.stderr == (
        "error: Graphviz's dot is not installed: apt-get install graphviz (Debian/Ubuntu),"
        " brew install graphviz (macOS), or see graphviz.org/download\n"
    )
    wrong = ezgraph_cli("viz", "-o", str(tmp_path / "g.jpg"), env=env)
    assert wrong.returncode == 2 and "name a .svg or .png file" in wrong.stderr


def test_diagnose_names_an_unserved_queue_and_a_join_waiting_for_it(
    make_context: Callable[..., Context],
) -> None:
    context = make_context("tests.graphs.diamond")
    env = subprocess_env(context.settings)
    run_id = GraphOrchestrator(context=context).submit("a")
    served = ezgraph_cli("worker", "a", "b", "--burst", env=env)
    assert served.returncode == 0, served.stderr
    found = ezgraph_cli("diagnose", run_id, env=env)
    assert found.returncode == 1, found.stderr
    assert found.stdout.splitlines() == [
        "stuck: step c is queued on 'c', which no live worker serves: start one"
        " (ezgraph worker c, or rq worker c)",
        "ok: join d waits for c (b arrived)",
    ]
    drain(context)
    ended = ezgraph_cli("diagnose", run_id, env=env)
    assert (ended.returncode, ended.stdout) == (
        0,
        f"ok: run {run_id} is finished: it is not stuck\n",
    )


def test_diagnose_names_a_retry_no_scheduler_will_run(make_context: Callable[..., Context]) -> None:
    context = make_context("tests.graphs.policies")
    run_id = GraphOrchestrator(context=context).submit("flaky", {"succeed_on": 3})
    drain(context)  # no scheduler: the first attempt fails, its retry waits in RQ's registry
    found = ezgraph_cli("diagnose", run_id, env=subprocess_env(context.settings))
    assert found.returncode == 1
    assert re.match(
        r"stuck: step flaky waits for a retry scheduled on 'flaky', due \d+ s from now, and no"
        r" scheduler runs for that queue: start ezgraph worker flaky \(it schedules\), or rq"
        r" worker --with-scheduler$",
        found.stdout.splitlines()[0],
    ), found.stdout


def test_diagnose_names_a_dead_worker_not_yet_reaped(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.slowchain")
    env = subprocess_env(context.settings)
    worker = ezgraph_process("worker", "a", env=env)
    try:
        payload = {"sleep": 30, "ledger_url": env["REDIS_URL"], "ledger_key": "l"}
        run_id = GraphOrchestrator(context=context).submit("a", payload)
        wait_for(lambda: redis_conn.llen("l") == 1, 30, "the step to start")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=15)
    time.sleep(context.tuning.beat_ttl + 0.5)  # its heartbeat expires
    found = ezgraph_cli("diagnose", run_id, env=env)
    assert found.returncode == 1, found.stderr
    assert re.search(
        r"^stuck: step a was started by worker \S+, which is dead \(its heartbeat stopped\) and"
        r" not yet reaped: a running ezgraph worker, or ezgraph reap --loop, gives it back$",
        found.stdout,
        re.MULTILINE,
    ), found.stdout


def test_diagnose_names_runs_waiting_for_a_database_that_is_down(
    make_context: Callable[..., Context],
) -> None:
    down = "postgresql+psycopg2://u:pw@127.0.0.1:1/none"
    context = make_context("tests.graphs.chain", database_url=down)
    run_id = GraphOrchestrator(context=context).submit("a")
    drain(context)
    found = ezgraph_cli("diagnose", run_id, env=subprocess_env(context.settings))
    assert found.returncode == 1
    assert found.stdout.splitlines()[1].startswith(
        "stuck: this run and 1 ended run(s) wait in Redis for a database that is down:"
        " database postgresql+psycopg2://u:***@127.0.0.1:1/none failed:"
    ), found.stdout


def test_metrics_serves_prometheus_text_with_the_live_workers(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.chain")
    env = subprocess_env(context.settings)
    port = free_port()
    exporter = ezgraph_process("metrics", "--port", str(port), env=env)
    worker = ezgraph_process("worker", "a", env=env)
    try:
        wait_for(lambda: bool(redis_conn.smembers(context.keys.workers)), 30, "the worker")
        run_id = GraphOrchestrator(context=context).submit("a")
        wait_for(lambda: redis_conn.llen("rq:queue:b") == 1, 30, "step a to run")

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                return str(reply.read().decode())

        wait_for(lambda: _answers(scrape), 30, "the exporter")
        text = scrape()
    finally:
        for process in (exporter, worker):
            stop(process)
    assert re.search(r'^rq_workers\{name="[^"]+",queues="a",state="idle"\} 1.0$', text, re.M)
    assert 'ezgraph_workers{kind="ezgraph",state="idle"} 1.0' in text
    assert 'ezgraph_queue_depth{node="b"} 1.0' in text
    assert "ezgraph_live_runs 1.0" in text
    once = ezgraph_cli("metrics", "--once", env=env)
    assert 'rq_jobs{queue="a",status="finished"} 1.0' in once.stdout
    assert run_id not in once.stdout  # no label per run: the cardinality stays bounded


def _answers(scrape: Callable[[], str]) -> bool:
    try:
        scrape()
    except OSError:
        return False
    return True


def test_dashboard_refuses_a_public_address_without_auth_and_serves_on_loopback(
    make_context: Callable[..., Context],
) -> None:
    env = subprocess_env(make_context("tests.graphs.chain").settings)
    refused = ezgraph_cli("dashboard", "--bind", "0.0.0.0", env=env)
    assert refused.returncode == 2
    assert refused.stderr == (
        "error: refusing to serve on 0.0.0.0 without auth: give --username and --password"
        " (or EZGRAPH_DASHBOARD_USERNAME/PASSWORD), or bind 127.0.0.1\n"
    )
    half = ezgraph_cli("dashboard", "--username", "ops", env=env)
    assert half.returncode == 2 and "give both --username and --password" in half.stderr
    port = free_port()
    server = ezgraph_process("dashboard", "--port", str(port), env=env)
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        wait_for(
            lambda: _answers(lambda: str(urllib.request.urlopen(url, timeout=5).read())), 30, "it"
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/runs", timeout=5) as reply:
            assert reply.status == 200 and b"<h1>Runs</h1>" in reply.read()
    finally:
        said = stop(server)
    assert server.returncode == 0
    assert f"ezgraph dashboard on http://127.0.0.1:{port}/" in said


def test_top_once_shows_queues_workers_and_the_rate(make_context: Callable[..., Context]) -> None:
    context = make_context("tests.graphs.chain")
    GraphOrchestrator(context=context).submit("a")
    shown = ezgraph_cli("top", "--once", "--interval", "0.2", env=subprocess_env(context.settings))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("steps/s 0.0   runs in flight 1   waiting for SQL 0")
    assert re.search(r"│ a\s+│\s+1 │", shown.stdout), shown.stdout


def test_procfile_prints_one_worker_per_node(make_context: Callable[..., Context]) -> None:
    env = subprocess_env(make_context("tests.graphs.diamond").settings)
    lines = ezgraph_cli("procfile", env=env).stdout.splitlines()
    assert lines[1:] == [
        "a: ezgraph -m tests.graphs.diamond worker a",
        "b: ezgraph -m tests.graphs.diamond worker b",
        "c: ezgraph -m tests.graphs.diamond worker c",
        "d: ezgraph -m tests.graphs.diamond worker d",
        "dashboard: ezgraph -m tests.graphs.diamond dashboard --port 9181",
    ]
    stock = ezgraph_cli("procfile", "--stock", "--dashboard-port", "0", env=env).stdout
    assert (
        'a: rq worker a --with-scheduler --url "$(ezgraph -m tests.graphs.diamond server url)"'
        in stock
    )
    assert "watchdog: ezgraph -m tests.graphs.diamond reap --loop" in stock


def test_every_command_s_help_summary_is_a_whole_sentence() -> None:
    done = subprocess.run(
        ["python", "-m", "ezgraph", "--help"], capture_output=True, text=True, check=True
    )
    commands = done.stdout.split("Commands:\n", 1)[1].splitlines()
    assert len(commands) >= 20
    for line in commands:
        summary = line.split(None, 1)[1]
        assert summary.endswith(".") and not summary.endswith("..."), line


def test_check_names_the_nodes_no_declared_start_reaches(
    make_context: Callable[..., Context],
) -> None:
    env = subprocess_env(make_context("tests.graphs.starts").settings)
    done = ezgraph_cli("check", env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ok: tests.graphs.starts: 4 nodes, 3 edges, joins: j (version ")
    assert lines[1:] == [
        "starts (STARTS): a",
        "warning: no start reaches x, y: they never run",
        "note: join j from start a: runs without x",
        "redis: maxmemory-policy noeviction",
    ]
