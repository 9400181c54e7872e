"""The SQL store: ``ezgraph_runs``, ``ezgraph_steps`` and ``ezgraph_run_events``, written once per
run by upsert (the tables are :mod:`ezgraph.state.tables`).

SQLite by default, PostgreSQL through ``postgresql+psycopg2://``. Any number of runs go in one
transaction (the fast worker batches them); writing a run again replaces it, so a run that was
persisted but not yet marked saved in Redis is never duplicated.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, cast

from sqlalchemy import (
    JSON,
    Connection,
    Engine,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.sql.expression import Executable

from ..errors import ConnectionFailed, StoreRefused
from ..model.records import (
    EncodedJSON,
    EventRecord,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
    parse_rq_date,
)
from ..settings import TUNING, Tuning, redact_text, redact_url, unencoded_in_password
from .tables import (
    events_table,
    idempotency_table,
    runs_table,
    steps_table,
)

SCHEMA_REVISION = "0005"  # the head of ezgraph/migrations/versions
VERSION_TABLE = "ezgraph_alembic_version"


def migrate(engine: Engine) -> None:
    """Run ezgraph's Alembic migrations up to the head on ``engine``."""
    # Imported here, not at the top: workers on an up-to-date database never need Alembic, and
    # importing it costs every worker process resident memory.
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "ezgraph:migrations")
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()
_schema_lock = threading.Lock()  # one thread of a process creates the tables at a time


def engine_for(url: str, tuning: Tuning = TUNING) -> Engine:
    """One engine per URL and process (engines pool connections; never share one across fork)."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine(
                url,
                pool_pre_ping=True,
                json_serializer=_json_text,
                connect_args=_timeouts(url, tuning),
            )
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _sqlite_pragmas)
            _engines[url] = engine
        return engine


def _timeouts(url: str, tuning: Tuning) -> dict[str, Any]:
    """Bounds on every SQL call, so a database that accepts and never answers counts as down:
    PostgreSQL's connect timeout, statement timeout (added to the URL's own ``options``) and
    TCP keepalives; SQLite waits ``busy_timeout`` for a lock (:func:`_sqlite_pragmas`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return {}
    options = parsed.query.get("options") or ""
    if isinstance(options, tuple):
        options = " ".join(options)
    if "statement_timeout" not in options:
        options = f"{options} -c statement_timeout={tuning.sql_statement_timeout * 1000}"
    return {
        "connect_timeout": tuning.sql_connect_timeout,
        "options": options.strip(),
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }


def _json_text(value: Any) -> str:
    """The JSON columns' serializer: values the hand-over read from Redis are JSON text
    already (:class:`EncodedJSON`) and go in as they are; anything else is serialized."""
    return str(value) if isinstance(value, EncodedJSON) else json.dumps(value)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # WAL lets readers (ezgraph status) work while a worker writes; the timeout rides out the
    # short lock of another worker's transaction. synchronous=NORMAL is WAL's usual setting:
    # a commit survives a crashed process, and only an OS crash or power loss may undo the
    # last ones, the same bound as Redis's own default fsync every second.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def dispose_engines() -> None:
    """Drop every cached engine (after fork, or in tests)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose(close=False)
        _engines.clear()


class Store:
    """Reads and writes runs in the SQL database at ``url``."""

    def __init__(self, url: str, tuning: Tuning = TUNING) -> None:
        self.url = url
        try:
            if unencoded_in_password(url, "@"):  # SQLAlchemy would take the rest for the host
                raise ValueError(
                    "its password holds @ unencoded: percent-encode the password"
                    " (urllib.parse.quote(password, safe=''))"
                )
            self.engine = engine_for(url, tuning)
        except (SQLAlchemyError, ValueError, ImportError) as error:
            raise ConnectionFailed(
                f"invalid database URL {redact_url(url)}: {redact_text(str(error), url)}"
            ) from None
        self._schema_ready = False

    def create_schema(self) -> None:
        """Bring ezgraph's tables to the current schema (``ezgraph init-db`` and first use).

        A database at :data:`SCHEMA_REVISION` costs one query; otherwise the Alembic migrations
        in ``ezgraph/migrations`` run. Another process may be migrating at the same moment: a
        failed attempt is retried once, and then finds the other's work done.
        """
        with _schema_lock:
            if self._revision() != SCHEMA_REVISION:
                try:
                    migrate(self.engine)
                except SQLAlchemyError:
                    with self._errors():
                        migrate(self.engine)
        self._schema_ready = True

    def _revision(self) -> str | None:
        """The schema revision the database is at (None before the first migration)."""
        with self._errors(), self.engine.connect() as connection:
            if not inspect(connection).has_table(VERSION_TABLE):
                return None
            revision = connection.scalar(text(f"select version_num from {VERSION_TABLE}"))
        return None if revision is None else str(revision)

    def save_steps(self, run_id: str, first: int, steps: Sequence[StepRecord]) -> None:
        """Write part of a wide run's steps, at positions from ``first``, in a transaction of
        its own (an upsert: writing it again, or beside another writer, changes nothing);
        :meth:`save_runs` then writes the run with its step count in ``steps_apart``.

        Raises:
            ConnectionFailed, StoreRefused: as :meth:`save_runs`.
        """
        if not self._schema_ready:
            self.create_schema()
        rows = [_step_values(run_id, first + n, step) for n, step in enumerate(steps)]
        with self._errors(), self.engine.begin() as connection:
            _upsert(connection, steps_table, rows, ["run_id", "step"])

    def save_runs(
        self,
        runs: Sequence[RunRecord],
        also: Callable[[Connection], None] | None = None,
        steps_apart: Mapping[str, int] | None = None,
    ) -> None:
        """Write ``runs`` and their steps in one transaction; a run written before is replaced.
        ``also`` writes more in that transaction (the runs' notifications). ``steps_apart``:
        runs whose steps :meth:`save_steps` wrote (run id -> how many), whose records carry
        none: only the steps past that count (an earlier, wider end's) are deleted.

        Raises:
            ConnectionFailed: the database is down or does not answer (try again later).
            StoreRefused: it refused a value of these runs (writing them again will not help).
        """
        if not runs:
            return
        if not self._schema_ready:
            self.create_schema()
        runs = list({run.run_id: run for run in runs}.values())  # a batch upserts a run once
        apart = steps_apart or {}
        run_rows = [_run_values(run) for run in runs]
        step_rows = [
            _step_values(run.run_id, position, step)
            for run in runs
            for position, step in enumerate(run.steps)
        ]
        with self._errors(), self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                _save_on_postgresql(connection, runs, run_rows, step_rows, apart)
            else:
                _save_runs_and_steps(connection, runs, run_rows, step_rows, apart)
            for run_id, count in apart.items():
                connection.execute(_delete_steps_from, {"run_id": run_id, "count": count})
            # Events are added, never replaced: a resumed run's stream may have been trimmed.
            event_rows = [_event_values(run.run_id, event) for run in runs for event in run.events]
            if event_rows:
                _upsert(connection, events_table, event_rows, ["run_id", "ms", "seq"])
            if also is not None:
                also(connection)

    def runs_by_key(self, keys: Sequence[str]) -> dict[str, str]:
        """The run ids of those of ``keys`` the database holds (idempotency keys)."""
        if not self._schema_ready:
            self.create_schema()
        column = idempotency_table.c.idempotency_key
        query = select(column, idempotency_table.c.run_id).where(column.in_(list(keys)))
        with self._errors(), self.engine.connect() as connection:
            return {key: run_id for key, run_id in connection.execute(query)}

    def load_run(self, run_id: str, with_steps: bool = True) -> RunRecord | None:
        """The persisted run, or None; without its steps unless ``with_steps`` (a
        1,000,000-item map's are 1,000,000 rows)."""
        if not self._schema_ready:
            self.create_schema()
        with self._errors(), self.engine.connect() as connection:
            row = connection.execute(
                select(runs_table).where(runs_table.c.run_id == run_id)
            ).first()
            if row is None:
                return None
            steps = (
                connection.execute(
                    select(steps_table)
                    .where(steps_table.c.run_id == run_id)
                    .order_by(steps_table.c.position)
                ).all()
                if with_steps
                else []
            )
        return RunRecord(
            run_id=row.run_id,
            package=row.package,
            start=row.start_node,
            status=RunStatus(row.status),
            input=row.input,
            result=row.result,
            error=row.error,
            created_at=row.created_at,
            ended_at=row.ended_at,
            steps=tuple(
                StepRecord(
                    step=s.step,
                    node=s.node,
                    index=s.item_index,
                    status=StepStatus(s.status),
                    attempts=s.attempts,
                    input=s.input,
                    output=s.output,
                    error=s.error,
                    started_at=s.started_at,
                    ended_at=s.ended_at,
                    worker=s.worker,
                )
                for s in steps
            ),
        )

    def load_events(self, run_id: str) -> list[EventRecord]:
        """The run's stored events, in the order they were emitted."""
        if not self._schema_ready:
            self.create_schema()
        query = (
            select(events_table.c.ms, events_table.c.seq, events_table.c.body)
            .where(events_table.c.run_id == run_id)
            .order_by(events_table.c.ms, events_table.c.seq)
        )
        with self._errors(), self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [EventRecord(f"{ms}-{seq}", json.dumps(body)) for ms, seq, body in rows]

    def count_runs(self) -> int:
        """How many runs the database holds."""
        if not self._schema_ready:
            self.create_schema()
        with self._errors(), self.engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(runs_table)) or 0)

    def count_by_status(self, run_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Per status, (rows, distinct run ids) among ``run_ids`` (the chaos audit's tally)."""
        if not self._schema_ready:
            self.create_schema()
        query = (
            select(
                runs_table.c.status, func.count(), func.count(func.distinct(runs_table.c.run_id))
            )
            .where(runs_table.c.run_id.in_(list(run_ids)))
            .group_by(runs_table.c.status)
        )
        with self._errors(), self.engine.connect() as connection:
            return {status: (int(n), int(d)) for status, n, d in connection.execute(query)}

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for read-only queries (the schema made first); errors in one line."""
        if not self._schema_ready:
            self.create_schema()
        with self._errors(), self.engine.connect() as connection:
            yield connection

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A connection in a transaction, committed at the end (the schema made first)."""
        if not self._schema_ready:
            self.create_schema()
        with self._errors(), self.engine.begin() as connection:
            yield connection

    def _errors(self) -> AbstractContextManager[None]:
        return _database_errors(self.url)


@contextmanager
def _database_errors(url: str) -> Iterator[None]:
    """Turn SQLAlchemy's errors into one line naming the database: :class:`ConnectionFailed`
    when it is down, does not answer or is locked; :class:`StoreRefused` when it refused the
    data (a value too long, a constraint: writing it again would fail again)."""
    try:
        yield
    except SQLAlchemyError as error:
        orig = getattr(error, "orig", None)
        detail = redact_text(str(orig or error).strip().splitlines()[0], url)
        down = isinstance(error, (OperationalError, InterfaceError, PoolTimeout)) or (
            isinstance(error, DBAPIError) and error.connection_invalidated
        )
        if down or not isinstance(error, DBAPIError):
            raise ConnectionFailed(f"database {redact_url(url)} failed: {detail}") from error
        raise StoreRefused(detail) from error
    except (ValueError, TypeError) as error:  # the driver refused a value before sending it
        raise StoreRefused(redact_text(str(error).strip().splitlines()[0], url)) from error


@functools.cache
def _upsert_statement(
    dialect: str, table: Table, keys: tuple[str, ...], replace: bool = True
) -> Executable:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE`` (or, without ``replace``, ``DO NOTHING``)
    for ``table`` on PostgreSQL or SQLite, built once per process (building it anew for each
    batch cost more than a one-run batch's writes)."""
    statement: Any = insert_of(dialect)(table)
    if not replace:
        return cast(Executable, statement.on_conflict_do_nothing(index_elements=list(keys)))
    updates = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
    return cast(
        Executable, statement.on_conflict_do_update(index_elements=list(keys), set_=updates)
    )


def insert_of(dialect: str) -> Any:
    """The dialect's ``insert`` (with ``on_conflict_do_update``) for PostgreSQL or SQLite."""
    # Imported here: each dialect costs a worker 1-2 MiB it needs only with that database.
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert
    from sqlalchemy.dialects import sqlite

    return sqlite.insert


_delete_steps = delete(steps_table).where(
    steps_table.c.run_id.in_(bindparam("run_ids", expanding=True))
)
_delete_steps_from = delete(steps_table).where(
    steps_table.c.run_id == bindparam("run_id"), steps_table.c.position >= bindparam("count")
)


def _upsert(
    connection: Connection, table: Table, rows: list[dict[str, Any]], keys: list[str]
) -> None:
    """Insert ``rows``, replacing those whose ``keys`` exist; executemany, compiled once."""
    dialect = connection.dialect.name
    if dialect in ("postgresql", "sqlite"):
        connection.execute(_upsert_statement(dialect, table, tuple(keys)), rows)
    else:  # other databases: delete then insert, still inside the caller's transaction
        for row in rows:
            match = [table.c[key] == row[key] for key in keys]
            connection.execute(delete(table).where(*match))
        connection.execute(table.insert(), rows)


def _insert_missing(
    connection: Connection, table: Table, rows: list[dict[str, Any]], key: str
) -> None:
    """Insert those of ``rows`` whose ``key`` the table does not hold yet; keep the others."""
    dialect = connection.dialect.name
    if dialect in ("postgresql", "sqlite"):
        connection.execute(_upsert_statement(dialect, table, (key,), replace=False), rows)
        return
    column = table.c[key]
    held = set(connection.scalars(select(column).where(column.in_([r[key] for r in rows]))))
    new = [row for row in rows if row[key] not in held]
    if new:
        connection.execute(table.insert(), new)


def _save_runs_and_steps(
    connection: Connection,
    runs: Sequence[RunRecord],
    run_rows: list[dict[str, Any]],
    step_rows: list[dict[str, Any]],
    apart: Mapping[str, int],
) -> None:
    """:meth:`Store.save_runs` on SQLite (and others): executemany of each table's rows."""
    _upsert(connection, runs_table, run_rows, ["run_id"])
    # A resumed run may have fewer mapped instances than before: replace its steps whole.
    whole = [run.run_id for run in runs if run.run_id not in apart]
    if whole:
        connection.execute(_delete_steps, {"run_ids": whole})
    if step_rows:
        connection.execute(steps_table.insert(), step_rows)
    key_rows = [
        {"idempotency_key": run.idempotency_key, "run_id": run.run_id}
        for run in runs
        if run.idempotency_key
    ]
    if key_rows:
        _insert_missing(connection, idempotency_table, key_rows, "idempotency_key")


def _save_on_postgresql(
    connection: Connection,
    runs: Sequence[RunRecord],
    run_rows: list[dict[str, Any]],
    step_rows: list[dict[str, Any]],
    apart: Mapping[str, int],
) -> None:
    """:meth:`Store.save_runs` on PostgreSQL: each table's rows in one multi-row statement,
    sent by psycopg2's ``execute_values``, and only the steps of runs written before deleted
    (the upsert returns which rows it inserted: those have no ``xmax``). SQLAlchemy's
    executemany made a round trip per run for an ``INSERT ... ON CONFLICT`` (it batches one only
    with RETURNING), and with RETURNING spent more CPU building the parameters than psycopg2
    does: a batch of 100 chain2 runs took 68-80 ms, then 23-35 ms, and 15-23 ms here."""
    from psycopg2 import Error, extras  # type: ignore[import-untyped]

    execute_values = extras.execute_values

    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    sql = ""
    try:
        sql, rows = _postgresql_rows(runs_table, run_rows)
        returned = execute_values(cursor, sql, rows, page_size=len(rows), fetch=True)
        replaced = [run_id for run_id, inserted in returned if not inserted and run_id not in apart]
        if replaced:
            connection.execute(_delete_steps, {"run_ids": replaced})
        if step_rows:
            sql, rows = _postgresql_rows(steps_table, step_rows)
            execute_values(cursor, sql, rows, page_size=len(rows))
        key_rows = [(run.idempotency_key, run.run_id) for run in runs if run.idempotency_key]
        if key_rows:
            sql, _ = _postgresql_rows(idempotency_table, [])
            execute_values(cursor, sql, key_rows, page_size=len(key_rows))
    except Error as error:  # as SQLAlchemy would have raised it (the callers catch its errors)
        raise DBAPIError.instance(sql, None, error, Error) from error
    finally:
        cursor.close()


# What follows each table's multi-row INSERT on PostgreSQL (psycopg2's %s is its VALUES).
_POSTGRESQL_TAILS = {
    "ezgraph_runs": "ON CONFLICT (run_id) DO UPDATE SET {updates} RETURNING run_id, xmax = 0",
    "ezgraph_steps": "",
    "ezgraph_idempotency_keys": "ON CONFLICT (idempotency_key) DO NOTHING",
}


def _postgresql_rows(table: Table, rows: list[dict[str, Any]]) -> tuple[str, list[tuple[Any, ...]]]:
    """``table``'s INSERT for ``execute_values``, and ``rows`` as tuples of its columns' values
    (a JSON column's as JSON text, which PostgreSQL reads into ``json``)."""
    sql, json_columns = _postgresql_insert(table)
    names = [column.name for column in table.columns]
    values = [
        tuple(
            _json_text(row[name]) if name in json_columns and row[name] is not None else row[name]
            for name in names
        )
        for row in rows
    ]
    return sql, values


@functools.cache
def _postgresql_insert(table: Table) -> tuple[str, frozenset[str]]:
    """``table``'s INSERT ... VALUES %s with its tail, and its JSON columns; built once."""
    names = [column.name for column in table.columns]
    keys = {column.name for column in table.primary_key.columns}
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in names if name not in keys)
    tail = _POSTGRESQL_TAILS[table.name].format(updates=updates)
    sql = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES %s {tail}"
    return sql, frozenset(c.name for c in table.columns if isinstance(c.type, JSON))


def _run_values(run: RunRecord) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "package": run.package,
        "start_node": run.start,
        "status": run.status,
        "input": run.input,
        "result": run.result,
        "error": _storable(run.error),
        "created_at": run.created_at,
        "ended_at": run.ended_at,
    }


def _step_values(run_id: str, position: int, step: StepRecord) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "step": step.step,
        "position": position,
        "node": step.node,
        "item_index": step.index,
        "status": step.status,
        "attempts": step.attempts,
        "input": step.input,
        "output": step.output,
        "error": _storable(step.error),
        "started_at": step.started_at,
        "ended_at": step.ended_at,
        "worker": step.worker,
    }


def _storable(text: str | None) -> str | None:
    """Text every database holds: PostgreSQL refuses NUL in text, so it is shown as ``\\x00``
    (JSON values keep theirs escaped as ``\\u0000``, which its ``json`` type takes)."""
    return text.replace("\x00", "\\x00") if text and "\x00" in text else text


def _event_values(run_id: str, event: EventRecord) -> dict[str, Any]:
    ms, _, seq = event.event_id.partition("-")
    body = json.loads(event.body)
    step, at = body.get("step"), body.get("at")
    return {
        "run_id": run_id,
        "ms": int(ms),
        "seq": int(seq or 0),
        "type": str(body.get("type", "event"))[:200],
        "step": step if isinstance(step, str) else None,
        "at": parse_rq_date(at) if isinstance(at, str) else None,
        "body": EncodedJSON(event.body),
    }
