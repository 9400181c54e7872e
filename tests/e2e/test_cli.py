"""The ezgraph command as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context

from ..conftest import ROOT, drain, ezgraph_cli, ezgraph_process, subprocess_env, wait_for
from ..integration.test_notify import Receiver


def test_submit_prints_the_run_id_last_and_status_reads_it(
    make_context: Callable[..., Context],
) -> None:
    context = make_context("tests.graphs.chain")
    env = subprocess_env(context.settings)
    done = ezgraph_cli("submit", "a", "-f", "user=joao", "-f", "n:=3", env=env)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip().splitlines()[-1]
    assert len(run_id) == 32
    queued = json.loads(ezgraph_cli("status", run_id, "--json", env=env).stdout)
    assert queued["status"] == "queued"
    assert json.loads(ezgraph_cli("queues", "--json", env=env).stdout) == {"a": 1, "b": 0}
    drain(context)
    human = ezgraph_cli("status", run_id, env=env)
    assert human.stdout.splitlines()[0] == f"run {run_id}: finished"
    assert '"n": 3' in human.stdout and '"user": "joao"' in human.stdout


def test_submit_wait_prints_the_result(make_context: Callable[..., Context]) -> None:
    context = make_context("tests.graphs.chain")
    env = subprocess_env(context.settings)
    worker = subprocess.Popen(
        [sys.executable, "-m", "ezgraph", "worker"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        done = ezgraph_cli("submit", "a", "--data", '{"q": "oi"}', "--wait", env=env)
    finally:
        worker.terminate()
        worker.wait(10)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines[-1]) == 32
    assert json.loads("\n".join(lines[:-1]))["trail"] == ["a", "b"]


def test_bad_cli_input_exits_2_with_one_line(make_context: Callable[..., Context]) -> None:
    env = subprocess_env(make_context("tests.graphs.chain").settings)
    cases = {
        ("submit", "a", "--data", "{nope"): "error: --data is not valid JSON",
        ("submit", "a", "--data", "[1]"): "error: --data must be a JSON object",
        ("submit", "a", "-f", "novalue"): "error: -f 'novalue': expected key=value or key:=JSON",
        ("submit", "a", "-f", "x:=NaN"): "error: payload is not JSON-serializable",
        ("submit", "zz"): "error: unknown start module 'zz'",
        ("status",): "Error: Missing argument 'RUN_ID'.",
        ("submit", "a", "--data", "[" * 5000 + "]" * 5000): "error: --data is not valid JSON",
        ("submit", "a", "-f", "n:=" + "9" * 5000): "error: -f n:= is not valid JSON",
        ("submit", "a", "-f", "x=\udcff"): "error: payload is not JSON-serializable",
        ("submit", "a", "--wait", "--timeout", "nan"): "nan is not a number of seconds above 0",
        ("submit", "a", "--wait", "--timeout", "-1"): "-1 is not a number of seconds above 0",
        ("submit", "a", "--wait", "--timeout", "inf"): "inf is not a number of seconds above 0",
        ("chaos", "-n", "0"): "Invalid value for '--runs' / '-n': 0 is not in the range x>=1",
        ("chaos", "-w", "0"): "Invalid value for '--workers' / '-w': 0 is not in the range x>=1",
        ("chaos", "--nemesis", "flood"): "Invalid value for '--nemesis': 'flood' is not one of",
        ("chaos", "--hold", "0"): "Invalid value for '--hold': 0 is not a number of seconds",
    }
    for args, message in cases.items():
        done = ezgraph_cli(*args, env=env)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert json.loads(ezgraph_cli("queues", "--json", env=env).stdout) == {"a": 0, "b": 0}


def test_settings_out_of_range_and_a_redis_db_that_is_not_a_number_are_refused(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    env = subprocess_env(make_context("tests.graphs.chain").settings)
    bad_db = env["REDIS_URL"].rsplit("/", 1)[0] + "/abc"
    cases = {
        ("EZGRAPH_JOB_TIMEOUT", "0"): (2, "error: EZGRAPH_JOB_TIMEOUT must be an integer from 1"),
        ("EZGRAPH_RUN_TTL", "9" * 20): (2, "error: EZGRAPH_RUN_TTL must be an integer from 1"),
        ("EZGRAPH_RESULT_TTL", "0"): (2, "error: EZGRAPH_RESULT_TTL must be an integer from -1"),
        ("EZGRAPH_CLAIM_BATCH", "-3"): (2, "error: EZGRAPH_CLAIM_BATCH must be an integer from 1"),
        ("EZGRAPH_RETRY_INTERVALS", "1,-1"): (2, "error: EZGRAPH_RETRY_INTERVALS must be"),
        ("REDIS_URL", bad_db): (1, f"error: invalid Redis URL {bad_db}: the database 'abc' is"),
    }
    for (name, value), (code, message) in cases.items():
        done = ezgraph_cli("submit", "a", env={**env, name: value})
        assert (done.returncode, done.stderr.count("\n")) == (code, 1), (name, done.stderr)
        assert done.stderr.startswith(message), (name, done.stderr)
    assert redis_conn.llen("rq:queue:a") == 0


def test_unknown_run_id_exits_1(make_context: Callable[..., Context]) -> None:
    env = subprocess_env(make_context("tests.graphs.chain").settings)
    done = ezgraph_cli("status", "0" * 32, env=env)
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: no run with id '{'0' * 32}'"


def test_check_and_viz(make_context: Callable[..., Context]) -> None:
    env = subprocess_env(make_context("tests.graphs.diamond").settings)
    checked = ezgraph_cli("check", env=env).stdout.splitlines()
    assert checked[0].startswith("ok: tests.graphs.diamond: 4 nodes, 4 edges, joins: d (version ")
    assert checked[1:] == ["starts (no predecessor): a", "redis: maxmemory-policy noeviction"]
    mermaid = ezgraph_cli("viz", "--format", "mermaid", env=env).stdout
    assert "a --> b" in mermaid and "c --> d" in mermaid
    bad = ezgraph_cli("-m", "tests.graphs.nope", "check", env=env)
    assert bad.returncode == 2 and "cannot import modules package" in bad.stderr


def test_run_uses_the_embedded_server_when_nothing_is_configured(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "EZGRAPH_"))}
    env.pop("DATABASE_URL", None)
    env["PYTHONPATH"] = str(ROOT)
    try:
        done = ezgraph_cli(
            "run",
            "intent_validator",
            "-f",
            "username=joao",
            "-f",
            "projeto=ezpag",
            "-f",
            "pergunta=quantos pedidos tivemos hoje?",
            env=env,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["intent"] == "count" and result["status"] == "answered"
        assert (tmp_path / "ezgraph.db").exists()
        assert (tmp_path / ".ezgraph" / "valkey.sock").exists()
        url = ezgraph_cli("server", "url", env=env, cwd=tmp_path).stdout.strip()
        assert url == f"unix://{tmp_path / '.ezgraph' / 'valkey.sock'}"
    finally:
        stopped = ezgraph_cli("server", "stop", env=env, cwd=tmp_path)
    assert stopped.stdout.strip() == "stopped"


def test_a_run_s_multi_line_error_is_printed_on_one_line(
    make_context: Callable[..., Context],
) -> None:
    env = subprocess_env(make_context("tests.graphs.broken").settings)
    done = ezgraph_cli("run", "raises", "-f", "detail=\n  and a second line", env=env)
    assert done.returncode == 1
    assert done.stderr.endswith(": raises: ValueError: boom in raises and a second line\n")
    assert done.stderr.count("\n") == 1, done.stderr


def test_ctrl_c_during_submit_wait_prints_the_run_id_and_the_run_goes_on(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.chain")
    waiting = ezgraph_process(
        "submit", "a", "--wait", "--timeout", "60",
        env=subprocess_env(context.settings),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(lambda: redis_conn.llen("rq:queue:a") == 1, 30, "the run to be submitted")
        time.sleep(0.3)  # into wait()
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    run_id = out.strip().splitlines()[-1]
    assert waiting.returncode == 130, err
    assert err.splitlines() == [  # no worker runs: submit says so first
        "warning: no live worker serves queue 'a': the run waits until one starts"
        " (ezgraph worker a, or rq worker a)",
        f"interrupted; run {run_id} goes on (ezgraph status {run_id})",
    ]
    drain(context)
    assert GraphOrchestrator(context=context).status(run_id)["status"] == "finished"


def test_run_posts_the_ended_run_to_flow_orchestration_url_and_status_says_so(
    make_context: Callable[..., Context],
) -> None:
    receiver = Receiver()
    try:
        context = make_context("tests.graphs.chain")
        env = subprocess_env(context.settings, FLOW_ORCHESTRATION_URL=receiver.url)
        done = ezgraph_cli("run", "a", "-f", "x=1", env=env)
        assert done.returncode == 0, done.stderr
        [(status, _headers, body)] = receiver.requests  # sent before the command returned
        assert status == 200 and body["status"] == "finished" and body["result"]["x"] == "1"
        shown = ezgraph_cli("status", body["run_id"], env=env)
        assert shown.stdout.splitlines()[-1] == "notification: delivered (1 attempt)"
    finally:
        receiver.close()
