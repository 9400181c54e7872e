"""The SQL store's schema: created by Alembic migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy
from alembic.config import Config
from alembic.script import ScriptDirectory

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.errors import StoreRefused
from ezgraph.model.records import RunRecord, RunStatus, StepRecord, StepStatus
from ezgraph.state.sql import SCHEMA_REVISION, VERSION_TABLE, Store
from ezgraph.state.tables import metadata

from ..conftest import drain, ezgraph_cli, subprocess_env


def test_schema_revision_is_the_head_of_the_migrations() -> None:
    config = Config()
    config.set_main_option("script_location", "ezgraph:migrations")
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_REVISION


def test_init_db_migrates_a_fresh_database_and_is_idempotent(
    make_context: Callable[..., Context], database_url: str
) -> None:
    env = subprocess_env(make_context("tests.graphs.chain", database_url=database_url).settings)
    for _ in range(2):
        done = ezgraph_cli("init-db", env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("schema ready in ")
    engine = sqlalchemy.create_engine(database_url)
    with engine.connect() as connection:
        tables = set(sqlalchemy.inspect(connection).get_table_names())
        revision = connection.scalar(sqlalchemy.text(f"select version_num from {VERSION_TABLE}"))
    engine.dispose()
    assert {"ezgraph_runs", "ezgraph_steps", VERSION_TABLE} <= tables
    assert revision == SCHEMA_REVISION


def test_a_database_made_before_migrations_is_adopted_with_its_rows(
    make_context: Callable[..., Context], sqlite_url: str
) -> None:
    engine = sqlalchemy.create_engine(sqlite_url)
    metadata.create_all(engine)  # the schema as ezgraph made it before migrations existed
    engine.dispose()
    context = make_context("tests.graphs.chain", database_url=sqlite_url)
    run_id = GraphOrchestrator(context=context).submit("a")
    drain(context)
    store = Store(sqlite_url)
    assert store._revision() == SCHEMA_REVISION
    assert store.load_run(run_id) is not None


def test_a_run_written_again_is_replaced_whole_in_a_batch_of_new_ones(database_url: str) -> None:
    """A batch upserts its runs (one multi-row INSERT on PostgreSQL) and replaces the steps of
    those written before only; a run twice in a batch is written once, as it was last; a key
    another run holds keeps its first run."""

    def run(run_id: str, status: RunStatus, steps: int, key: str | None = None) -> RunRecord:
        return RunRecord(
            run_id, "p", "a", status, {"q": run_id}, idempotency_key=key,
            steps=tuple(StepRecord(f"m-{i}", "m", i, StepStatus.FINISHED) for i in range(steps)),
        )  # fmt: skip

    store = Store(database_url)
    store.save_runs([run("r1", RunStatus.FAILED, 3, "k1"), run("r2", RunStatus.FINISHED, 2)])
    store.save_runs(
        [
            run("r3", RunStatus.FINISHED, 1),
            run("r1", RunStatus.RUNNING, 9),
            run("r1", RunStatus.FINISHED, 1, "k1"),
            run("r4", RunStatus.FINISHED, 2, "k1"),
        ]
    )
    loaded = {r: store.load_run(r) for r in ("r1", "r2", "r3", "r4")}
    assert {r: (x.status, len(x.steps)) for r, x in loaded.items() if x} == {
        "r1": (RunStatus.FINISHED, 1),
        "r2": (RunStatus.FINISHED, 2),
        "r3": (RunStatus.FINISHED, 1),
        "r4": (RunStatus.FINISHED, 2),
    }
    assert store.runs_by_key(["k1", "k2"]) == {"k1": "r1"}
    assert store.count_runs() == 4
    if database_url.startswith("postgresql"):  # a step name over its column's 220 characters
        too_long = RunRecord("r5", "p", "a", RunStatus.FINISHED, {}, steps=(
            StepRecord("m" * 300, "m", None, StepStatus.FINISHED),))  # fmt: skip
        with pytest.raises(StoreRefused, match="value too long for type character varying"):
            store.save_runs([run("r6", RunStatus.FINISHED, 1), too_long])
        assert store.load_run("r6") is None and store.count_runs() == 4  # rolled back whole


@pytest.mark.parametrize(
    ("package", "start", "fields"),
    [
        ("tests.graphs.chain", "a", {"pergunta": "quantos pedidos tivemos hoje? ção ✓"}),
        ("tests.graphs.routed", "r", {"route": ["x", "y", "z"], "nested": {"n": [1, 2.5, None]}}),
    ],
)
def test_sql_holds_the_values_redis_held(
    make_context: Callable[..., Context],
    database_url: str,
    package: str,
    start: str,
    fields: dict[str, object],
) -> None:
    """The hand-over writes the JSON text Redis holds as it is: read back from SQL, the input,
    the result (one sink, or several merged) and every step's output equal the live record."""
    context = make_context(package, database_url=database_url)
    run_id = GraphOrchestrator(context=context).submit(start, fields)
    drain(context)
    live = GraphOrchestrator(context=context).get_run(
        run_id
    )  # still in Redis after the write, parsed from it
    stored = context.store.load_run(run_id)
    assert live is not None and stored is not None
    assert stored.status == live.status == "finished"
    assert stored.input == live.input == fields
    assert isinstance(stored.result, dict) and stored.result == live.result
    sinks = context.graph(package).sinks()
    assert all(stored.result[sink] is True for sink in sinks)  # every sink's state is in it
    assert [(s.step, s.output) for s in stored.steps] == [(s.step, s.output) for s in live.steps]
    assert all(isinstance(s.output, dict) for s in stored.steps if s.status == "finished")
