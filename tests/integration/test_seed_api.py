"""The seed's API, as it was written: submit, status, GraphOrchestrator, ModuleWorker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from ezgraph import GraphOrchestrator, ModuleWorker, status, submit
from ezgraph.context import Context
from ezgraph.errors import GraphError
from ezgraph.settings import Settings

from ..conftest import drain


@pytest.fixture
def seed_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, redis_conn: Redis, tmp_path: Path):
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'seed.db'}")
    monkeypatch.setenv("EZGRAPH_MODULES", "ezgraph.example")
    return Settings.from_env()


def test_seed_submit_status_and_list_queues(seed_env: Settings, redis_conn: Redis) -> None:
    run_id = submit(
        start_module="intent_validator",
        username="joao",
        projeto="ezpag",
        pergunta="quantos pedidos tivemos hoje?",
    )
    assert len(run_id) == 32
    assert status(run_id)["status"] == "queued"
    assert GraphOrchestrator().list_queues() == {
        "intent_validator": 1,
        "reject": 0,
        "history_preferences": 0,
        "planner": 0,
        "answer": 0,
    }
    drain(Context(seed_env, redis_conn))
    final = status(run_id)
    assert set(final) >= {"run_id", "status", "nodes", "result", "error"}
    assert final["status"] == "finished"
    assert final["nodes"] == {
        "intent_validator": "finished",
        "reject": "skipped",
        "history_preferences": "finished",
        "planner": "finished",
        "answer": "finished",
    }
    result = final["result"]
    assert (result["intent"], result["entity"], result["period"]) == ("count", "orders", "today")
    assert result["status"] == "answered"
    assert result["preferences"]["questions_count"] == 1
    assert final["error"] is None


def test_seed_invalid_question_is_routed_to_reject(seed_env: Settings, redis_conn: Redis) -> None:
    run_id = submit(start_module="intent_validator", username="ana", pergunta="bom dia!")
    drain(Context(seed_env, redis_conn))
    final = status(run_id)
    assert final["status"] == "finished"
    assert final["nodes"]["reject"] == "finished"
    assert final["nodes"]["answer"] == "skipped"
    assert final["result"]["status"] == "rejected"


def test_seed_empty_question_fails_the_run_with_a_clear_error(
    seed_env: Settings, redis_conn: Redis
) -> None:
    run_id = submit(start_module="intent_validator", username="ana", pergunta="   ")
    drain(Context(seed_env, redis_conn))
    final = status(run_id)
    assert final["status"] == "failed"
    assert final["error"].startswith("intent_validator: ValueError:")


def test_module_worker_subclasses_serve_their_queue_with_start(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    from tests.graphs.seedstyle.count_chars import CountChars
    from tests.graphs.seedstyle.shout import Shout

    context = make_context("tests.graphs.seedstyle")
    run_id = GraphOrchestrator(context=context).submit("shout", pergunta="oi")
    assert issubclass(Shout, ModuleWorker) and Shout().node_name() == "shout"
    assert CountChars().node_name() == "count_chars"
    Shout().start(burst=True, settings=context.settings)
    assert redis_conn.llen("rq:queue:count_chars") == 1
    CountChars().start(burst=True, settings=context.settings)
    final = GraphOrchestrator(context=context).status(run_id)
    assert final["status"] == "finished"
    assert final["result"] == {"pergunta": "oi", "shouted": "OI", "chars": 2}


def test_a_module_worker_s_node_drops_a_worker_suffix_and_must_be_in_the_graph(
    make_context: Callable[..., Context],
) -> None:
    class ShoutWorker(ModuleWorker):
        def process(self, data: dict[str, Any]) -> dict[str, Any]:
            return {}

    class Elsewhere(ModuleWorker):
        def process(self, data: dict[str, Any]) -> dict[str, Any]:
            return {}

    class Worker(ModuleWorker):
        name = "count_chars"

    assert ShoutWorker().node_name() == "shout" and Worker().node_name() == "count_chars"
    context = make_context("tests.graphs.seedstyle")
    with pytest.raises(GraphError, match="Elsewhere serves node 'elsewhere', which is not in"):
        Elsewhere().start(burst=True, settings=context.settings)
