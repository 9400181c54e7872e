"""The SQL store: ``ezgraph_runs`` and ``ezgraph_steps``, written once per run by upsert.

SQLite by default, PostgreSQL through ``postgresql+psycopg2://``. Any number of runs go in one
transaction (the fast worker batches them); writing a run again replaces it, so a run that was
persisted but not yet marked saved in Redis is never duplicated.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    Integer,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .errors import ConnectionFailed
from .records import RunRecord, StepRecord
from .settings import redact_url


class Base(DeclarativeBase):
    """Declarative base of ezgraph's own tables (prefixed ``ezgraph_``)."""


class RunRow(Base):
    """A persisted run."""

    __tablename__ = "ezgraph_runs"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    package: Mapped[str] = mapped_column(String(200))
    start_node: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), index=True)
    input: Mapped[Any] = mapped_column(JSON, nullable=True)
    result: Mapped[Any] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class StepRow(Base):
    """A persisted step; ``step`` is the node, or ``node-<i>`` for a mapped instance."""

    __tablename__ = "ezgraph_steps"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    step: Mapped[str] = mapped_column(String(220), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    node: Mapped[str] = mapped_column(String(200))
    item_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    input: Mapped[Any] = mapped_column(JSON, nullable=True)
    output: Mapped[Any] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()
_schema_lock = threading.Lock()  # one thread of a process creates the tables at a time


def engine_for(url: str) -> Engine:
    """One engine per URL and process (engines pool connections; never share one across fork)."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine(url, pool_pre_ping=True)
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _sqlite_pragmas)
            _engines[url] = engine
        return engine


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

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine = engine_for(url)
        except (SQLAlchemyError, ValueError, ImportError) as error:
            raise ConnectionFailed(f"invalid database URL {redact_url(url)}: {error}") from None
        self._schema_ready = False

    def create_schema(self) -> None:
        """Create ezgraph's tables if they do not exist (``ezgraph init-db`` and first use).

        Another process may be creating them at the same moment: a failed attempt is retried
        once, and the retry's existence check then sees the other's tables.
        """
        with _schema_lock:
            try:
                Base.metadata.create_all(self.engine)
            except SQLAlchemyError:
                with self._errors():
                    Base.metadata.create_all(self.engine)
        self._schema_ready = True

    def save_runs(self, runs: Sequence[RunRecord]) -> None:
        """Write ``runs`` and their steps in one transaction; a run written before is replaced."""
        if not runs:
            return
        if not self._schema_ready:
            self.create_schema()
        run_rows = [_run_values(run) for run in runs]
        step_rows = [
            _step_values(run.run_id, position, step)
            for run in runs
            for position, step in enumerate(run.steps)
        ]
        with self._errors(), Session(self.engine) as session, session.begin():
            _upsert(session, RunRow, run_rows, ["run_id"])
            # A resumed run may have fewer mapped instances than before: replace its steps whole.
            session.execute(delete(StepRow).where(StepRow.run_id.in_([r.run_id for r in runs])))
            if step_rows:
                session.execute(cast(Table, StepRow.__table__).insert(), step_rows)

    def load_run(self, run_id: str) -> RunRecord | None:
        """The persisted run, or None."""
        if not self._schema_ready:
            self.create_schema()
        with self._errors(), Session(self.engine) as session:
            row = session.get(RunRow, run_id)
            if row is None:
                return None
            steps = session.scalars(
                select(StepRow).where(StepRow.run_id == run_id).order_by(StepRow.position)
            ).all()
        return RunRecord(
            run_id=row.run_id,
            package=row.package,
            start=row.start_node,
            status=row.status,
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
                    status=s.status,
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

    def count_runs(self) -> int:
        """How many runs the database holds."""
        with self._errors(), Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(RunRow)) or 0)

    def _errors(self) -> AbstractContextManager[None]:
        return _database_errors(self.url)


@contextmanager
def _database_errors(url: str) -> Iterator[None]:
    """Turn SQLAlchemy's errors into a one-line :class:`ConnectionFailed` naming the database."""
    try:
        yield
    except SQLAlchemyError as error:
        detail = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise ConnectionFailed(f"database {redact_url(url)} failed: {detail}") from error


def _upsert(
    session: Session, model: type[Base], rows: list[dict[str, Any]], keys: list[str]
) -> None:
    """Insert ``rows``, replacing those whose ``keys`` exist; executemany, compiled once."""
    dialect = session.get_bind().dialect.name
    table = cast(Table, model.__table__)
    if dialect in ("postgresql", "sqlite"):
        insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
        updates = {c.name: insert.excluded[c.name] for c in table.columns if c.name not in keys}
        session.execute(insert.on_conflict_do_update(index_elements=keys, set_=updates), rows)
    else:  # other databases: one merge per row, still inside the caller's transaction
        for row in rows:
            session.merge(model(**row))


def _run_values(run: RunRecord) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "package": run.package,
        "start_node": run.start,
        "status": run.status,
        "input": run.input,
        "result": run.result,
        "error": run.error,
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
        "error": step.error,
        "started_at": step.started_at,
        "ended_at": step.ended_at,
        "worker": step.worker,
    }
