"""Launching the way RQ users do: ``honcho start`` on the Procfile runs a submitted run to its
end, and docker-compose.yml holds together (healthchecks, one image, commands that exist)."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import click
import pytest
import yaml
from redis import Redis

from ezgraph.cli import cli
from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.model.graph import EXAMPLE_PACKAGE, load_graph

from ..conftest import ROOT, subprocess_env, wait_for

QUESTION = {"username": "joao", "projeto": "ezpag", "pergunta": "quantos pedidos tivemos hoje?"}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_honcho_start_on_the_procfile_runs_a_submitted_run_to_its_end(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    honcho = shutil.which("honcho")
    if honcho is None:
        pytest.skip("honcho is not installed (pip install 'ezgraph[ops]')")
    context = make_context(EXAMPLE_PACKAGE)
    context.store.create_schema()  # as a deployment runs ezgraph init-db first
    env = subprocess_env(context.settings, EZGRAPH_DASHBOARD_PORT=str(free_port()))
    started = subprocess.Popen(
        [honcho, "start", "-f", str(ROOT / "Procfile"), "-d", str(ROOT)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        nodes = load_graph(EXAMPLE_PACKAGE).nodes
        wait_for(
            lambda: {n for w in _rq_workers(redis_conn) for n in w} >= set(nodes),
            60,
            "a worker on every node's queue",
        )
        orchestrator = GraphOrchestrator(context=context)
        run_id = orchestrator.submit("intent_validator", QUESTION)
        outcome = orchestrator.wait(run_id, timeout=60)
        assert outcome["status"] == "finished", outcome
        assert outcome["result"]["status"] == "answered"
        wait_for(lambda: context.store.load_run(run_id) is not None, 30, "the run in SQL")
    finally:
        os.killpg(started.pid, signal.SIGINT)  # as Ctrl-C in honcho's terminal
        output = started.communicate(timeout=30)[0]
    assert "dashboard" in output and "ezgraph dashboard on http://127.0.0.1:" in output


def _rq_workers(connection: Redis) -> list[list[str]]:
    """The queues of every registered RQ worker."""
    return [
        (connection.hget(key, "queues") or b"").decode().split(",")
        for key in connection.smembers("rq:workers")
    ]


def compose() -> dict[str, Any]:
    """docker-compose.yml, parsed (merge keys resolved)."""
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_builds_one_image_for_every_ezgraph_service() -> None:
    services = compose()["services"]
    built = [name for name, service in services.items() if "build" in service]
    assert built == ["init-db"]
    image = services["init-db"]["image"]
    ours = [s for s in services.values() if s.get("command", [""])[0] == "ezgraph"]
    assert len(ours) == 7 and all(s["image"] == image for s in ours)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".ezgraph", "*.db"} <= set(ignored)


def test_compose_waits_for_healthy_services_and_checks_their_health() -> None:
    services = compose()["services"]
    for name in ("redis", "postgres", "dashboard"):
        assert services[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    for name, service in services.items():
        for needed, how in service.get("depends_on", {}).items():
            assert needed in services, (name, needed)
            expected = (
                "service_completed_successfully" if needed == "init-db" else "service_healthy"
            )
            assert how == {"condition": expected}, (name, needed)
    workers = [s for s in services.values() if s.get("command", ["", ""])[1] == "worker"]
    assert all("init-db" in s["depends_on"] for s in workers)
    assert services["dashboard"]["ports"] == ["127.0.0.1:9181:9181"]


def test_every_compose_command_is_a_command_that_exists() -> None:
    nodes = set(load_graph(EXAMPLE_PACKAGE).nodes)
    served = set()
    for name, service in compose()["services"].items():
        command = service.get("command")
        if command is None:
            continue
        program, *args = command
        if program != "ezgraph":
            assert shutil.which(program) or program in ("redis-server",), (name, program)
            continue
        sub = cli.commands.get(args[0])
        assert sub is not None, (name, args[0])
        context = sub.make_context(args[0], list(args[1:]))  # raises on an unknown option
        if args[0] == "worker":
            served |= set(context.params["nodes"])
    assert served == nodes  # one worker service per module of the example graph


def test_every_procfile_line_is_an_ezgraph_command_that_exists() -> None:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        _name, command = line.split(":", 1)
        program, sub, *args = shlex.split(command.replace("${EZGRAPH_DASHBOARD_PORT:-9181}", "1"))
        assert program == "ezgraph"
        found = cli.commands.get(sub)
        assert isinstance(found, click.Command), line
        found.make_context(sub, args)
