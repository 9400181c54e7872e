"""Unit tests of the example modules: classifier, planner, texts and the history store."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from ezgraph.example import GRAPH_CONNECTIONS, ROUTES, answer, history_preferences, planner, reject
from ezgraph.example.history_preferences import UserHistory, UserPreferences
from ezgraph.example.intent_validator import MAX_QUESTION_CHARS
from ezgraph.example.intent_validator import process as validate
from ezgraph.model.module_api import Route, StepContext, reset_current_step, set_current_step

BRT = timezone(timedelta(hours=-3))
# A Wednesday, so the week runs Monday 13 to Monday 20.
NOW = datetime(2024, 5, 15, 10, 30, tzinfo=BRT)


def _classify(question: str, key: str = "pergunta") -> dict[str, Any]:
    route = validate({key: question, "username": "ana"})
    return dict(route.output)


def _in_step(
    url: str,
    run_id: str,
    function: Callable[[dict[str, Any]], Any],
    data: dict[str, Any],
    attempt: int = 1,
) -> Any:
    context = StepContext(
        run_id=run_id, node="history_preferences", index=None, attempt=attempt, database_url=url
    )
    token = set_current_step(context)
    try:
        return function(data)
    finally:
        reset_current_step(token)


def _state(
    question: str, entity: str, language: str = "pt", username: str = "ana"
) -> dict[str, Any]:
    return {
        "question": question,
        "username": username,
        "intent": "count",
        "entity": entity,
        "language": language,
    }


def _rows(url: str, username: str) -> tuple[int, UserPreferences | None]:
    with Session(history_preferences.get_engine(url)) as session:
        count = session.scalar(
            select(func.count()).select_from(UserHistory).where(UserHistory.username == username)
        )
        preferences = session.get(UserPreferences, username)
        return int(count or 0), preferences


@pytest.fixture
def example_db(tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite file for one test; the module's cached engine is closed afterwards."""
    yield f"sqlite:///{tmp_path / 'example.db'}"
    history_preferences.dispose_engines()


# --- the graph ---------------------------------------------------------------------------


def test_graph_routes_are_declared_successors_and_answer_joins_both_branches() -> None:
    for node, targets in ROUTES.items():
        assert set(targets) <= set(GRAPH_CONNECTIONS[node])
    parents = sorted(node for node, nexts in GRAPH_CONNECTIONS.items() if "answer" in nexts)
    assert parents == ["history_preferences", "planner"]


# --- intent_validator: classification ----------------------------------------------------


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("Quantos pedidos tivemos hoje?", ("pt", "count", "orders", "today")),
        ("Quantas vendas foram feitas ontem?", ("pt", "count", "sales", "yesterday")),
        ("Qual o faturamento do mês passado?", ("pt", "sum", "sales", "last_month")),
        ("QUAL O FATURAMENTO DO MES PASSADO", ("pt", "sum", "sales", "last_month")),
        ("Mostre os clientes dos últimos 30 dias", ("pt", "list", "customers", "last_30_days")),
        ("Liste os produtos desta semana", ("pt", "list", "products", "this_week")),
        ("Quantos usuários se cadastraram este ano?", ("pt", "count", "users", "this_year")),
        ("Quantos pedidos na última semana?", ("pt", "count", "orders", "last_week")),
        ("Compare as vendas deste mês com o mês passado", ("pt", "compare", "sales", "this_month")),
        ("How many orders did we get today?", ("en", "count", "orders", "today")),
        ("What was the total revenue last month?", ("en", "sum", "sales", "last_month")),
        ("Show me the customers from the last 7 days", ("en", "list", "customers", "last_7_days")),
        ("Which products sold this week?", ("en", "list", "products", "this_week")),
        ("Number of users this year", ("en", "count", "users", "this_year")),
        ("Compare sales this month vs last month", ("en", "compare", "sales", "this_month")),
        ("How many orders did José place yesterday?", ("en", "count", "orders", "yesterday")),
        ("Olá, tudo bem com você?", ("pt", "unknown", None, None)),
        ("What's the weather like?", ("en", "unknown", None, None)),
    ],
)
def test_classifier_reads_language_intent_entity_and_period(
    question: str, expected: tuple[str, str, str | None, str | None]
) -> None:
    output = _classify(question)
    assert (output["language"], output["intent"], output["entity"], output["period"]) == expected


def test_language_tie_goes_to_the_key_the_question_came_in() -> None:
    # One Portuguese word and one English word: nothing to choose between but the key.
    assert _classify("orders hoje", key="pergunta")["language"] == "pt"
    assert _classify("orders hoje", key="question")["language"] == "en"


def test_question_is_returned_with_whitespace_collapsed() -> None:
    assert _classify("  Quantos   pedidos\n hoje? ")["question"] == "Quantos pedidos hoje?"


def test_classifiable_question_is_routed_to_history_and_planner() -> None:
    route = validate({"question": "How many orders today?", "username": "ana", "projeto": "x"})
    assert isinstance(route, Route)
    assert route.to == ("history_preferences", "planner")
    assert route.output["valid"] is True
    assert "reason" not in route.output


def test_question_without_entity_is_routed_to_reject_with_a_reason() -> None:
    route = validate({"pergunta": "Quantos temos hoje?", "username": "ana"})
    assert route.to == ("reject",)
    assert route.output["valid"] is False
    assert route.output["intent"] == "count"
    assert "what it is about" in route.output["reason"]


# --- intent_validator: malformed input raises ---------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"username": "ana"}, "missing question"),
        ({"pergunta": "", "username": "ana"}, "empty"),
        ({"pergunta": "   \n ", "username": "ana"}, "empty"),
        ({"pergunta": "x" * (MAX_QUESTION_CHARS + 1), "username": "ana"}, "limit is 500"),
        ({"pergunta": "Quantos pedidos hoje?"}, "missing username"),
        ({"pergunta": "Quantos pedidos hoje?", "username": "  "}, "missing username"),
    ],
)
def test_malformed_input_raises_value_error(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate(data)


def test_question_of_exactly_the_limit_is_accepted() -> None:
    question = ("quantos pedidos hoje " * 30)[:MAX_QUESTION_CHARS]
    assert validate({"pergunta": question, "username": "ana"}).to[0] == "history_preferences"


def test_non_string_question_raises_type_error() -> None:
    with pytest.raises(TypeError, match="must be a string"):
        validate({"pergunta": 42, "username": "ana"})


# --- planner ------------------------------------------------------------------------------


def _window(day: int, month: int = 5, year: int = 2024) -> datetime:
    return datetime(year, month, day, tzinfo=BRT)


@pytest.mark.parametrize(
    ("period", "now", "expected"),
    [
        ("today", NOW, (_window(15), _window(16))),
        ("yesterday", NOW, (_window(14), _window(15))),
        ("yesterday", _window(1, 3), (_window(29, 2), _window(1, 3))),
        ("this_week", NOW, (_window(13), _window(20))),
        ("last_week", NOW, (_window(6), _window(13))),
        ("this_month", NOW, (_window(1), _window(1, 6))),
        ("this_month", _window(20, 12), (_window(1, 12), _window(1, 1, 2025))),
        ("last_month", _window(10, 1), (_window(1, 12, 2023), _window(1, 1))),
        ("this_year", NOW, (_window(1, 1), _window(1, 1, 2025))),
        ("last_year", NOW, (_window(1, 1, 2023), _window(1, 1))),
        ("last_7_days", NOW, (_window(9), _window(16))),
        ("last_1_days", NOW, (_window(15), _window(16))),
    ],
)
def test_period_bounds_are_half_open_calendar_windows(
    period: str, now: datetime, expected: tuple[datetime, datetime]
) -> None:
    assert planner.period_bounds(period, now) == expected


def test_period_bounds_keep_the_reference_time_zone() -> None:
    bounds = planner.period_bounds("today", NOW)
    assert bounds is not None
    assert bounds[0].isoformat() == "2024-05-15T00:00:00-03:00"


def test_no_period_has_no_bounds_and_unknown_period_raises() -> None:
    assert planner.period_bounds(None, NOW) is None
    with pytest.raises(ValueError, match="unknown period"):
        planner.period_bounds("next_decade", NOW)


def test_previous_month_is_a_calendar_month_not_thirty_days() -> None:
    assert planner.previous_bounds("this_month", _window(10, 3)) == (_window(1, 2), _window(1, 3))


def test_count_plan_is_parameterised_over_the_period() -> None:
    data = {"intent": "count", "entity": "orders", "period": "today", "now": NOW.isoformat()}
    plan = planner.process(data)["plan"]
    assert plan["sql"] == (
        "SELECT COUNT(*) FROM orders WHERE created_at >= :start AND created_at < :end"
    )
    assert plan["params"] == {
        "start": "2024-05-15T00:00:00-03:00",
        "end": "2024-05-16T00:00:00-03:00",
    }
    assert plan["table"] == "orders"
    assert plan["aggregate"] == "count"
    assert plan["filters"] == [
        {"column": "created_at", "op": ">=", "value": "2024-05-15T00:00:00-03:00"},
        {"column": "created_at", "op": "<", "value": "2024-05-16T00:00:00-03:00"},
    ]


def test_sum_plan_adds_up_the_entity_measure() -> None:
    plan = planner.process({"intent": "sum", "entity": "sales", "period": None})["plan"]
    assert plan["sql"] == "SELECT SUM(amount) FROM sales"
    assert plan["params"] == {}
    assert plan["filters"] == []


def test_sum_over_an_entity_without_measure_becomes_a_count() -> None:
    plan = planner.process({"intent": "sum", "entity": "customers", "period": None})["plan"]
    assert plan["aggregate"] == "count"
    assert plan["sql"] == "SELECT COUNT(*) FROM customers"


def test_list_plan_has_no_aggregate_and_a_limit() -> None:
    plan = planner.process({"intent": "list", "entity": "products", "period": None})["plan"]
    assert plan["aggregate"] is None
    assert plan["sql"] == "SELECT * FROM products ORDER BY created_at DESC LIMIT 100"


def test_compare_plan_spans_the_period_and_the_one_before() -> None:
    data = {"intent": "compare", "entity": "sales", "period": None, "now": NOW.isoformat()}
    plan = planner.process(data)["plan"]
    assert plan["period"] == "this_month"
    assert plan["params"] == {
        "previous_start": "2024-04-01T00:00:00-03:00",
        "start": "2024-05-01T00:00:00-03:00",
        "end": "2024-06-01T00:00:00-03:00",
    }
    assert ":previous_start" in plan["sql"]


def test_naive_reference_time_is_taken_as_utc() -> None:
    data = {"intent": "count", "entity": "orders", "period": "today", "now": "2024-05-15T23:00"}
    assert planner.process(data)["plan"]["params"]["start"] == "2024-05-15T00:00:00+00:00"


def test_planner_refuses_entities_outside_its_table_list() -> None:
    with pytest.raises(ValueError, match="cannot plan entity"):
        planner.process({"intent": "count", "entity": "orders; DROP TABLE users"})


def test_planner_refuses_a_malformed_reference_time() -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        planner.process({"intent": "count", "entity": "orders", "now": "yesterday-ish"})


# --- reject and answer texts --------------------------------------------------------------


def test_reject_answers_in_portuguese_and_names_what_was_missing() -> None:
    result = reject.process({"language": "pt", "intent": "count", "entity": None})
    assert result["status"] == "rejected"
    assert result["answer"].startswith("Desculpe, não consegui entender")
    assert "pedidos, clientes" in result["answer"]
    assert "contar, somar" not in result["answer"]


def test_reject_answers_in_english() -> None:
    result = reject.process({"language": "en", "intent": "unknown", "entity": None})
    assert result["answer"].startswith("Sorry, I could not understand your question.")
    assert "count, sum, list or compare" in result["answer"]


def _plan(intent: str, entity: str, period: str | None) -> dict[str, Any]:
    data = {"intent": intent, "entity": entity, "period": period, "now": NOW.isoformat()}
    plan: dict[str, Any] = planner.process(data)["plan"]
    return plan


def test_answer_describes_the_plan_in_portuguese() -> None:
    state = {"language": "pt", "intent": "count", "plan": _plan("count", "orders", "today")}
    result = answer.process(state)
    assert result == {
        "answer": "Vou contar os pedidos de hoje (SELECT COUNT(*) FROM orders"
        " WHERE created_at >= :start AND created_at < :end).",
        "status": "answered",
    }


def test_answer_describes_the_plan_in_english_with_the_favorite_entity() -> None:
    state = {
        "language": "en",
        "intent": "sum",
        "plan": _plan("sum", "sales", "last_month"),
        "history": [{"question": "How many customers?", "entity": "customers"}],
        "preferences": {"favorite_entity": "customers"},
    }
    sentence = answer.process(state)["answer"]
    assert sentence.startswith("I will add up the value of last month's sales (SELECT SUM(amount)")
    assert sentence.endswith("You often ask about customers.")


def test_answer_does_not_call_a_first_question_a_favorite() -> None:
    state = {
        "language": "pt",
        "intent": "list",
        "plan": _plan("list", "customers", "last_30_days"),
        "history": [],
        "preferences": {"favorite_entity": "customers"},
    }
    sentence = answer.process(state)["answer"]
    assert sentence.startswith("Vou listar os clientes dos últimos 30 dias (SELECT *")
    assert "costuma" not in sentence


def test_answer_in_a_step_reads_each_predecessor_output() -> None:
    outputs = {
        "planner": {"plan": _plan("count", "users", "yesterday")},
        "history_preferences": {
            "history": [{"question": "q", "entity": "orders"}],
            "preferences": {"favorite_entity": "orders"},
        },
    }
    context = StepContext(
        run_id="r1", node="answer", index=None, attempt=1, database_url="", outputs=outputs
    )
    token = set_current_step(context)
    try:
        sentence = answer.process({"language": "pt", "intent": "count"})["answer"]
    finally:
        reset_current_step(token)
    assert sentence.startswith("Vou contar os usuários de ontem (SELECT COUNT(*) FROM users")
    assert sentence.endswith("Você costuma perguntar sobre pedidos.")


# --- history_preferences on SQLite --------------------------------------------------------


def test_rerun_of_the_same_step_writes_history_once_and_counts_once(example_db: str) -> None:
    data = _state("Quantos pedidos hoje?", "orders")
    first = _in_step(example_db, "run-a", history_preferences.process, data)
    again = _in_step(example_db, "run-a", history_preferences.process, data, attempt=2)
    assert again == first
    count, preferences = _rows(example_db, "ana")
    assert count == 1
    assert preferences is not None
    assert preferences.questions_count == 1
    assert first["preferences"]["questions_count"] == 1


def test_history_lists_at_most_five_previous_questions_newest_first(example_db: str) -> None:
    for number in range(7):
        result = _in_step(
            example_db,
            f"run-{number}",
            history_preferences.process,
            _state(f"question {number}", "orders"),
        )
    questions = [entry["question"] for entry in result["history"]]
    assert questions == ["question 5", "question 4", "question 3", "question 2", "question 1"]
    assert result["preferences"]["questions_count"] == 7
    created = [datetime.fromisoformat(entry["created_at"]) for entry in result["history"]]
    assert all(moment.tzinfo is not None for moment in created)


def test_rerun_returns_the_history_it_returned_first_despite_later_runs(example_db: str) -> None:
    first = _in_step(example_db, "run-a", history_preferences.process, _state("a", "orders"))
    _in_step(example_db, "run-b", history_preferences.process, _state("b", "orders"))
    again = _in_step(example_db, "run-a", history_preferences.process, _state("a", "orders"))
    assert again["history"] == first["history"] == []


def test_preferences_keep_favorite_entity_latest_language_and_count(example_db: str) -> None:
    asked = [("orders", "pt"), ("orders", "pt"), ("customers", "en")]
    for number, (entity, language) in enumerate(asked):
        result = _in_step(
            example_db,
            f"run-{number}",
            history_preferences.process,
            _state(f"q{number}", entity, language),
        )
    assert result["preferences"] == {
        "language": "en",
        "favorite_entity": "orders",
        "questions_count": 3,
    }


def test_favorite_entity_tie_goes_to_the_latest_asked(example_db: str) -> None:
    _in_step(example_db, "run-1", history_preferences.process, _state("q1", "orders"))
    result = _in_step(example_db, "run-2", history_preferences.process, _state("q2", "sales"))
    assert result["preferences"]["favorite_entity"] == "sales"


def test_history_belongs_to_its_user(example_db: str) -> None:
    _in_step(
        example_db, "run-1", history_preferences.process, _state("q1", "orders", username="bob")
    )
    result = _in_step(example_db, "run-2", history_preferences.process, _state("q2", "orders"))
    assert result["history"] == []
    assert result["preferences"]["questions_count"] == 1


def test_outside_a_step_the_input_itself_is_the_idempotency_key(
    example_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", example_db)
    history_preferences.process(_state("q1", "orders"))
    history_preferences.process(_state("q1", "orders"))
    assert _rows(example_db, "ana")[0] == 1
    history_preferences.process(_state("q2", "orders"))
    assert _rows(example_db, "ana")[0] == 2


def test_engine_is_created_once_per_url(example_db: str) -> None:
    assert history_preferences.get_engine(example_db) is history_preferences.get_engine(example_db)


def test_history_preferences_requires_a_username(example_db: str) -> None:
    with pytest.raises(ValueError, match="missing username"):
        _in_step(example_db, "run-1", history_preferences.process, {"question": "q"})


# --- history_preferences on PostgreSQL ----------------------------------------------------


@pytest.mark.postgres
def test_postgres_rerun_writes_once_and_concurrent_steps_both_count(postgres_url: str) -> None:
    username = f"test-{uuid.uuid4().hex}"
    run = uuid.uuid4().hex
    try:
        data = _state("Quantos pedidos hoje?", "orders", username=username)
        first = _in_step(postgres_url, f"{run}-a", history_preferences.process, data)
        again = _in_step(postgres_url, f"{run}-a", history_preferences.process, data, attempt=2)
        assert again == first
        assert _rows(postgres_url, username)[0] == 1

        # Two new steps of a new user race to create the preferences row: both must count.
        racer = f"{username}-race"
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def step(name: str) -> None:
            try:
                barrier.wait(timeout=5)
                state = _state(name, "sales", username=racer)
                _in_step(postgres_url, f"{run}-{name}", history_preferences.process, state)
            except BaseException as error:  # a thread cannot fail the test: the assert below does
                errors.append(error)

        threads = [threading.Thread(target=step, args=(name,)) for name in ("x", "y")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert errors == []
        count, preferences = _rows(postgres_url, racer)
        assert count == 2
        assert preferences is not None
        assert preferences.questions_count == 2
    finally:
        with Session(history_preferences.get_engine(postgres_url)) as session, session.begin():
            for name in (username, f"{username}-race"):
                session.execute(delete(UserHistory).where(UserHistory.username == name))
                session.execute(delete(UserPreferences).where(UserPreferences.username == name))
        history_preferences.dispose_engines()
