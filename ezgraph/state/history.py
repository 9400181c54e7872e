"""Runs in SQL, read for operators: pages of runs newest first, and counts for the metrics.

Every query here rides on an index of migration 0002: a page is a keyset scan of
``(created_at, run_id)`` (alone, or after ``status`` or ``start_node``), so a page costs the
same at 100,000 runs as at 100; the metrics are grouped counts over the indexes' leading
columns. Writing runs is :class:`~ezgraph.state.sql.Store`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, literal_column, select, tuple_

from .sql import Store
from .tables import runs_table, steps_table

# The step duration histogram's upper bounds, in seconds (Prometheus's style: + Inf last).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# A step's duration in whole milliseconds, rounded up (exact against the buckets' bounds), per
# dialect. Migration 0002 indexes (node, this expression), and the metrics' query groups by the
# very same text, so the database reads the durations from the index instead of computing them
# for every step (1.3 s against 35 ms over 200,000 steps on SQLite).
DURATION_MS = {
    "sqlite": "CAST((julianday(ended_at) - julianday(started_at)) * 86400000.0 + 0.999999"
    " AS INTEGER)",
    "postgresql": "CAST(CEIL(EXTRACT(EPOCH FROM (ended_at - started_at)) * 1000) AS INTEGER)",
}


@dataclass(frozen=True)
class RunQuery:
    """Which runs to list: each field narrows it; ``run_id`` is a prefix of the id."""

    status: str | None = None
    start: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    run_id: str | None = None

    @property
    def live_only(self) -> bool:
        """True when only runs in Redis can match (SQL holds ended runs only)."""
        return self.status in ("queued", "running")


@dataclass(frozen=True)
class RunRow:
    """One run of a list: its header, without input, result or steps."""

    run_id: str
    start: str
    status: str
    created_at: datetime | None
    ended_at: datetime | None
    error: str | None
    live: bool = False  # read from Redis: in flight, or ended and not yet in SQL

    @property
    def sort_key(self) -> tuple[datetime, str]:
        """Newest first sorts by this, descending (a run with no date sorts last)."""
        return (self.created_at or datetime.min.replace(tzinfo=UTC), self.run_id)


@dataclass(frozen=True)
class Histogram:
    """One node's step durations: cumulative counts per bound of ``DURATION_BUCKETS``."""

    buckets: tuple[int, ...]
    count: int
    total: float


def utc(value: datetime | None) -> datetime | None:
    """``value`` as an aware UTC datetime (SQLite gives back naive UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class History:
    """Read-only queries over ``ezgraph_runs`` and ``ezgraph_steps``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def page(
        self,
        query: RunQuery,
        limit: int,
        before: tuple[datetime, str] | None = None,
        exclude: Sequence[str] = (),
    ) -> list[RunRow]:
        """Up to ``limit`` runs matching ``query``, newest first, older than ``before``
        (created_at, run_id), leaving out the ids in ``exclude`` (runs Redis holds)."""
        if query.live_only:
            return []
        runs = runs_table.c
        conditions: list[ColumnElement[bool]] = []
        if query.status:
            conditions.append(runs.status == query.status)
        if query.start:
            conditions.append(runs.start_node == query.start)
        if query.since:
            conditions.append(runs.created_at >= query.since)
        if query.until:
            conditions.append(runs.created_at < query.until)
        if query.run_id:  # a prefix, as a range on the primary key (LIKE may skip the index)
            conditions.append(runs.run_id >= query.run_id)
            conditions.append(runs.run_id < query.run_id + "\U0010ffff")
        if before is not None:
            conditions.append(tuple_(runs.created_at, runs.run_id) < tuple_(*before))
        if exclude:
            conditions.append(runs.run_id.not_in(list(exclude)))
        statement = (
            select(
                runs.run_id,
                runs.start_node,
                runs.status,
                runs.created_at,
                runs.ended_at,
                func.substr(runs.error, 1, 300),
            )
            .where(and_(True, *conditions))
            .order_by(runs.created_at.desc(), runs.run_id.desc())
            .limit(limit)
        )
        with self.store.reading() as connection:
            rows = connection.execute(statement).all()
        return [RunRow(row[0], row[1], row[2], utc(row[3]), utc(row[4]), row[5]) for row in rows]

    def runs_by_start_and_status(self) -> dict[tuple[str, str], int]:
        """How many runs SQL holds per (start node, status)."""
        runs = runs_table.c
        statement = select(runs.start_node, runs.status, func.count()).group_by(
            runs.start_node, runs.status
        )
        with self.store.reading() as connection:
            return {(start, status): int(n) for start, status, n in connection.execute(statement)}

    def steps_by_node_and_status(self) -> dict[tuple[str, str], int]:
        """How many steps SQL holds per (node, status)."""
        steps = steps_table.c
        statement = select(steps.node, steps.status, func.count()).group_by(
            steps.node, steps.status
        )
        with self.store.reading() as connection:
            return {(node, status): int(n) for node, status, n in connection.execute(statement)}

    def step_durations(self) -> dict[str, Histogram]:
        """Per node, the durations of the steps SQL holds that started and ended: one grouped
        scan of the expression index of migration 0002 (node, duration in whole milliseconds,
        rounded up), bucketed here; the sum is in milliseconds' precision."""
        expression = DURATION_MS.get(self.store.engine.dialect.name)
        if expression is None:
            return {}
        ms: ColumnElement[Any] = literal_column(expression)
        statement = (
            select(steps_table.c.node, ms, func.count())
            .where(ms.is_not(None))
            .group_by(steps_table.c.node, ms)
        )
        with self.store.reading() as connection:
            rows = connection.execute(statement).all()
        found: dict[str, list[tuple[int, int]]] = {}
        for node, millis, count in rows:
            found.setdefault(node, []).append((int(millis), int(count)))
        return {node: _bucketed(groups) for node, groups in found.items()}


def _bucketed(groups: Sequence[tuple[int, int]]) -> Histogram:
    """A histogram from (milliseconds, steps) groups."""
    buckets = tuple(
        sum(n for millis, n in groups if millis <= bound * 1000) for bound in DURATION_BUCKETS
    )
    return Histogram(
        buckets=buckets,
        count=sum(n for _, n in groups),
        total=sum(millis * n for millis, n in groups) / 1000,
    )


def newer_first(rows: Sequence[RunRow], limit: int) -> list[RunRow]:
    """``rows`` newest first, the first ``limit``."""
    return sorted(rows, key=lambda row: row.sort_key, reverse=True)[:limit]


def matches(row: RunRow, query: RunQuery) -> bool:
    """True when ``row`` (a run read from Redis) fits ``query``, as :meth:`History.page` does."""
    created = row.created_at
    return not (
        (query.status and row.status != query.status)
        or (query.start and row.start != query.start)
        or (query.since and (created is None or created < query.since))
        or (query.until and (created is None or created >= query.until))
        or (query.run_id and not row.run_id.startswith(query.run_id))
    )
