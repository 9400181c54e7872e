"""``ezgraph submit`` with many payloads (--jsonl) and with an idempotency key (--key)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from redis import Redis

from ezgraph.context import Context

from ..conftest import ROOT, ezgraph_cli, subprocess_env


def test_submit_jsonl_submits_one_run_per_line_and_prints_their_ids_in_order(
    make_context: Callable[..., Context], redis_conn: Redis, tmp_path: Path
) -> None:
    context = make_context("tests.graphs.chain")
    env = subprocess_env(context.settings)
    lines = tmp_path / "runs.jsonl"
    lines.write_text('{"n": 1}\n\n{"n": 2, "who": "ana"}\n  \n{"n": 3}')  # no final newline
    done = ezgraph_cli("submit", "a", "--jsonl", str(lines), env=env)
    assert done.returncode == 0, done.stderr
    run_ids = done.stdout.split()
    assert len(run_ids) == 3
    inputs = [json.loads(redis_conn.hget(context.keys.run(r), "input") or b"") for r in run_ids]
    assert inputs == [{"n": 1}, {"n": 2, "who": "ana"}, {"n": 3}]
    assert redis_conn.lrange("rq:queue:a", 0, -1) == [f"{r}-a".encode() for r in run_ids]


def test_submit_jsonl_with_bad_lines_names_each_and_submits_nothing(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    env = subprocess_env(make_context("tests.graphs.chain").settings)
    text = b'{"n": 1}\n[1, 2]\n{"n": \n\xff\xfe\n{"x": NaN}\n{"n": 6}\n'
    done = subprocess.run(
        [sys.executable, "-m", "ezgraph", "submit", "a", "--jsonl", "-"],
        input=text,
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == b""
    errors = done.stderr.decode().splitlines()
    assert errors[0] == "error: line 2: must be a JSON object, got list"
    assert errors[1].startswith("error: line 3: not valid JSON: Expecting value")
    assert errors[2] == "error: line 4: not UTF-8"
    assert errors[3].startswith("error: line 5: payload is not JSON-serializable")
    assert errors[4] == "error: 4 bad lines in <stdin>: nothing submitted"
    assert redis_conn.llen("rq:queue:a") == 0
    for args, message in {
        ("--jsonl", "-", "--data", "{}"): "--jsonl takes the payloads from its lines",
        ("--key", ""): "idempotency key must be 1 to 200 characters",
    }.items():
        refused = ezgraph_cli("submit", "a", *args, env=env)
        assert refused.returncode == 2 and message in refused.stderr, (args, refused.stderr)
    empty = subprocess.run(
        [sys.executable, "-m", "ezgraph", "submit", "a", "--jsonl", "-"],
        input=b"\n\n",
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert empty.returncode == 2 and b"no JSON lines in <stdin>: nothing submitted" in empty.stderr


def test_submit_key_from_concurrent_processes_starts_one_run(
    make_context: Callable[..., Context], redis_conn: Redis, tmp_path: Path
) -> None:
    context = make_context("tests.graphs.chain")
    env = subprocess_env(context.settings)
    submitters = [
        subprocess.Popen(
            [sys.executable, "-m", "ezgraph", "submit", "a", "--key", "order-9", "-f", f"n={n}"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for n in range(4)
    ]
    printed = {submitter.communicate(timeout=60)[0].strip() for submitter in submitters}
    assert len(printed) == 1 and context.runs.live() == list(printed)
    assert redis_conn.llen("rq:queue:a") == 1
    lines = tmp_path / "batch.jsonl"
    lines.write_text('{"n": 1}\n{"n": 2}\n')
    first = ezgraph_cli("submit", "a", "--jsonl", str(lines), "--key", "batch", env=env)
    again = ezgraph_cli("submit", "a", "--jsonl", str(lines), "--key", "batch", env=env)
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert first.stdout == again.stdout and len(first.stdout.split()) == 2
    assert redis_conn.llen("rq:queue:a") == 3
    key = redis_conn.hget(context.keys.run(first.stdout.split()[1]), "idempotency_key")
    assert key == b"batch:2"
