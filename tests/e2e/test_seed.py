"""The seed's files, as the seed writes them (but the import line), run as a new user would:
its two-node graph, its question, and its recipe for a new module."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.settings import Settings

from ..conftest import ROOT, wait_for

SEED_GRAPH = """\
GRAPH_CONNECTIONS = {
    'intent_validator': ['history_preferences'],
    'history_preferences': []
}
"""

SEED_GRAPH_WITH_NEW_MODULE = """\
GRAPH_CONNECTIONS = {
    'intent_validator': ['history_preferences'],
    'history_preferences': ['novo_modulo'],
    'novo_modulo': []
}
"""

# The seed's recipe for a new module, verbatim but for the import line.
SEED_NEW_MODULE = """\
from ezgraph import ModuleWorker


class NovoModuloWorker(ModuleWorker):
    def __init__(self):
        super().__init__('novo_modulo')

    def process(self, data):
        return {'resposta': 'novo modulo viu: ' + data['pergunta']}


if __name__ == '__main__':
    NovoModuloWorker().start()
"""

QUESTION = "quantos pedidos tivemos hoje?"
SEED_QUESTION = ["-f", "username=joao", "-f", "projeto=ezpag", "-f", f"pergunta={QUESTION}"]


def seed_project(folder: Path, graph: str) -> Path:
    """A project folder: the seed's modules package, holding the modules ezgraph ships."""
    modules = folder / "modules"
    modules.mkdir()
    (modules / "__init__.py").write_text(graph)
    for node in ("intent_validator", "history_preferences"):
        shutil.copy(ROOT / "ezgraph" / "example" / f"{node}.py", modules / f"{node}.py")
    return folder


def seed_env(redis_url: str, folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "RQ_", "EZGRAPH_"))}
    env.update(
        REDIS_URL=redis_url,
        DATABASE_URL=f"sqlite:///{folder / 'seed.db'}",
        PYTHONPATH=str(ROOT),
    )
    return env


def ezgraph(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ezgraph", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_seeds_two_node_graph_runs_the_seeds_question_with_the_shipped_modules(
    tmp_path: Path, redis_url: str, redis_conn: Redis
) -> None:
    folder = seed_project(tmp_path, SEED_GRAPH)
    env = seed_env(redis_url, folder)
    checked = ezgraph(folder, env, "check").stdout.splitlines()
    assert checked[0].startswith("ok: modules: 2 nodes, 1 edges (version ")
    assert checked[1:] == [
        "starts (no predecessor): intent_validator",
        "redis: maxmemory-policy noeviction",
    ]
    done = ezgraph(folder, env, "run", "intent_validator", *SEED_QUESTION)
    assert done.returncode == 0, done.stderr
    assert '"intent": "count"' in done.stdout and '"questions_count": 1' in done.stdout
    rejected = ezgraph(
        folder, env, "run", "intent_validator", "-f", "username=ana", "-f", "pergunta=bom dia"
    )
    assert rejected.returncode == 0, rejected.stderr  # no reject node here: it goes on, marked
    assert '"valid": false' in rejected.stdout


def test_the_seeds_new_module_recipe_serves_its_node_as_a_script(
    tmp_path: Path, redis_url: str, redis_conn: Redis
) -> None:
    folder = seed_project(tmp_path, SEED_GRAPH_WITH_NEW_MODULE)
    (folder / "worker_novo_modulo.py").write_text(SEED_NEW_MODULE)
    env = seed_env(redis_url, folder)
    assert ezgraph(folder, env, "check").returncode == 0
    settings = Settings(
        redis_url=redis_url, database_url=env["DATABASE_URL"], modules_package="modules"
    )
    sys.path.insert(0, str(folder))
    try:
        orchestrator = GraphOrchestrator(context=Context(settings, redis_conn))
        run_id = orchestrator.submit("intent_validator", username="joao", pergunta=QUESTION)
    finally:
        sys.path.remove(str(folder))
    others = subprocess.Popen(
        [sys.executable, "-m", "ezgraph", "worker", "intent_validator", "history_preferences"],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    novo = subprocess.Popen(
        [sys.executable, "worker_novo_modulo.py"],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: orchestrator.status(run_id)["status"] == "finished", 60, "the run to end")
    finally:
        for process in (others, novo):
            process.terminate()
            process.communicate(timeout=30)
    result = orchestrator.status(run_id)["result"]
    assert result["resposta"] == f"novo modulo viu: {QUESTION}"
    assert result["intent"] == "count"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "from ezgraph import ModuleWorker\n\nclass NovoModuloWorker(ModuleWorker):\n"
            "    def __init__(self, needed):\n        super().__init__('novo_modulo')\n",
            "error: node 'novo_modulo': class NovoModuloWorker cannot be created: TypeError:",
        ),
        (
            "from ezgraph import ModuleWorker\n\nclass NovoModuloWorker(ModuleWorker):\n"
            "    def __init__(self):\n        raise RuntimeError('no database')\n",
            "error: node 'novo_modulo': class NovoModuloWorker cannot be created: RuntimeError:"
            " no database",
        ),
    ],
)
def test_a_broken_module_class_is_one_line_in_check_and_run(
    tmp_path: Path, redis_url: str, redis_conn: Redis, source: str, message: str
) -> None:
    folder = seed_project(tmp_path, SEED_GRAPH_WITH_NEW_MODULE)
    (folder / "worker_novo_modulo.py").write_text(source)
    env = seed_env(redis_url, folder)
    for args in (["check"], ["run", "intent_validator", *SEED_QUESTION]):
        done = ezgraph(folder, env, *args)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines()[-1].startswith(message), done.stderr
        assert len(done.stderr.strip().splitlines()) <= 2  # a notice at most, no traceback


def test_rqs_own_redis_url_is_read_after_redis_url(
    tmp_path: Path, redis_url: str, redis_conn: Redis
) -> None:
    """With only RQ_REDIS_URL set (what ``rq worker`` reads), ezgraph uses that Redis instead of
    starting its embedded server; with nothing set it says it uses the embedded one."""
    folder = seed_project(tmp_path, SEED_GRAPH)
    env = seed_env(redis_url, folder)
    env["RQ_REDIS_URL"] = env.pop("REDIS_URL")
    env["EZGRAPH_HOME"] = str(folder / ".ezgraph")
    submitted = ezgraph(folder, env, "submit", "intent_validator", *SEED_QUESTION)
    assert submitted.returncode == 0, submitted.stderr
    assert "embedded" not in submitted.stderr and not (folder / ".ezgraph").exists()
    assert redis_conn.llen("rq:queue:intent_validator") == 1
    del env["RQ_REDIS_URL"]
    queues = ezgraph(folder, env, "queues", "--json")
    try:
        assert queues.returncode == 0, queues.stderr
        assert queues.stderr.startswith("no REDIS_URL set: using the embedded server unix://")
        assert (folder / ".ezgraph").exists()
    finally:
        ezgraph(folder, env, "server", "stop")
