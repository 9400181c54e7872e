"""The delivery state of ended runs' notifications, in ``ezgraph_notifications`` (SQL).

A run written to SQL while ``FLOW_ORCHESTRATION_URL`` is set gets a *pending* row in the same
transaction (:meth:`Notifications.pending_for`): a run in SQL is never without its notification.
A notifier takes a due row by moving its ``next_attempt_at`` to the end of its lease, a compare
and set that one notifier wins (:meth:`Notifications.take`), POSTs it, and marks it
*delivered*, *pending* again later, or *failed* (a refusal that sending again cannot change).
A notifier that dies mid-POST leaves the row to be taken again once its lease ends: delivery
is at least once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.sql.expression import Executable

from ..model.records import RunRecord
from .sql import Store, insert_of
from .tables import notifications_table

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True)
class Notification:
    """One run's notification: its state, tries, and when it is due (or was delivered)."""

    run_id: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    delivered_at: datetime | None
    ended_at: datetime | None


def _write_pending(runs: Sequence[RunRecord], connection: Connection) -> None:
    """Write a pending notification for each of ``runs`` (see ``Notifications.pending_for``)."""
    now = datetime.now(UTC)
    rows = [
        {"run_id": run.run_id, "ended_at": run.ended_at, "state": PENDING, "attempts": 0,
         "next_attempt_at": now, "last_error": None, "delivered_at": None}
        for run in runs
    ]  # fmt: skip
    dialect = connection.dialect.name
    if dialect in ("postgresql", "sqlite"):
        connection.execute(_pending_statement(dialect), rows)
        return
    table = notifications_table  # other databases: a run written again is told again
    connection.execute(delete(table).where(table.c.run_id.in_([r["run_id"] for r in rows])))
    connection.execute(table.insert(), rows)


@functools.cache
def _pending_statement(dialect: str) -> Executable:
    """The upsert of pending rows that leaves a row for the same end alone (built once)."""
    table = notifications_table
    statement: Any = insert_of(dialect)(table)
    excluded = statement.excluded
    return cast(
        Executable,
        statement.on_conflict_do_update(
            index_elements=["run_id"],
            set_={c.name: excluded[c.name] for c in table.columns if c.name != "run_id"},
            where=table.c.ended_at.is_distinct_from(excluded.ended_at),
        ),
    )


class Notifications:
    """Reads and moves notifications in the store's database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def pending_for(self, runs: Sequence[RunRecord]) -> Callable[[Connection], None]:
        """What :meth:`Store.save_runs` writes with ``runs``: a pending notification each,
        unless one exists for the same end (the hand-over may write a run twice: it is not
        told twice for that; a retried run that ended again is)."""
        return functools.partial(_write_pending, runs)

    def due(self, now: datetime, limit: int) -> list[tuple[str, datetime, int]]:
        """Pending notifications due at ``now``, oldest first: (run id, ``next_attempt_at``,
        attempts made)."""
        table = notifications_table
        query = (
            select(table.c.run_id, table.c.next_attempt_at, table.c.attempts)
            .where(table.c.state == PENDING, table.c.next_attempt_at <= now)
            .order_by(table.c.next_attempt_at)
            .limit(limit)
        )
        with self.store.reading() as connection:
            return [tuple(row) for row in connection.execute(query)]  # type: ignore[misc]

    def take(self, run_id: str, seen: datetime, until: datetime) -> bool:
        """Take a due notification until ``until`` (the lease); False when another took it
        first (it no longer holds the ``next_attempt_at`` this notifier ``seen``)."""
        table = notifications_table
        return self._update(
            update(table)
            .where(
                table.c.run_id == run_id,
                table.c.state == PENDING,
                table.c.next_attempt_at == seen,
            )
            .values(next_attempt_at=until)
        )

    def settle(
        self, run_id: str, leased: datetime, error: str | None, retry_at: datetime | None
    ) -> bool:
        """End an attempt made under the lease ``leased``: delivered (no ``error``), pending
        again at ``retry_at``, or failed for good. False when the lease was lost meanwhile (it
        ran out, or the run ended again): the row is left to whoever holds it now."""
        table = notifications_table
        now = datetime.now(UTC)
        if error is None:
            values: dict[str, Any] = {"state": DELIVERED, "delivered_at": now, "last_error": None}
        elif retry_at is not None:
            values = {"state": PENDING, "next_attempt_at": retry_at, "last_error": error}
        else:
            values = {"state": FAILED, "last_error": error}
        return self._update(
            update(table)
            .where(table.c.run_id == run_id, table.c.next_attempt_at == leased)
            .values(attempts=table.c.attempts + 1, **values)
        )

    def of(self, run_id: str) -> Notification | None:
        """Run ``run_id``'s notification, or None."""
        table = notifications_table
        with self.store.reading() as connection:
            row = connection.execute(select(table).where(table.c.run_id == run_id)).first()
        return None if row is None else Notification(**row._asdict())

    def counts(self) -> dict[str, int]:
        """Notifications by state (``pending`` counts those being sent too)."""
        table = notifications_table
        query = select(table.c.state, func.count()).group_by(table.c.state)
        with self.store.reading() as connection:
            return {state: int(count) for state, count in connection.execute(query)}

    def _update(self, statement: Executable) -> bool:
        """Run ``statement``; True when it changed one row."""
        with self.store.writing() as connection:
            return bool(connection.execute(statement).rowcount == 1)
