"""Typed SQLAlchemy ORM models over ezgraph's tables, for querying runs from your own code.

    from sqlalchemy.orm import Session
    from ezgraph.models import RunRow
    with Session(engine) as session:
        failed = session.scalars(select(RunRow).where(RunRow.status == "failed")).all()

ezgraph itself writes through the Core tables of :mod:`ezgraph.state.sql`; these classes map the
very same tables.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import DeclarativeBase, Mapped

from .state.tables import idempotency_table, metadata, runs_table, steps_table


class Base(DeclarativeBase):
    """Declarative base sharing ezgraph's metadata."""

    metadata = metadata


class RunRow(Base):
    """A persisted run (``ezgraph_runs``)."""

    __table__ = runs_table

    run_id: Mapped[str]
    package: Mapped[str]
    start_node: Mapped[str]
    status: Mapped[str]
    input: Mapped[Any]
    result: Mapped[Any]
    error: Mapped[str | None]
    created_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]


class StepRow(Base):
    """A persisted step (``ezgraph_steps``); ``step`` is the node, or ``node-<i>`` in a map."""

    __table__ = steps_table

    run_id: Mapped[str]
    step: Mapped[str]
    position: Mapped[int]
    node: Mapped[str]
    item_index: Mapped[int | None]
    status: Mapped[str]
    attempts: Mapped[int]
    input: Mapped[Any]
    output: Mapped[Any]
    error: Mapped[str | None]
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    worker: Mapped[str | None]


class IdempotencyKeyRow(Base):
    """A submission's idempotency key and the run it started (``ezgraph_idempotency_keys``)."""

    __table__ = idempotency_table

    idempotency_key: Mapped[str]
    run_id: Mapped[str]
