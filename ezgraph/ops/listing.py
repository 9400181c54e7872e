"""The runs list: runs in Redis (in flight, or ended and not yet in SQL) and SQL's history in
one list, newest first, a page at a time.

A page is keyed by the last run shown (its ``created_at`` and id, the cursor), never by an
offset, so page 1,000 costs what page 1 does. Redis's runs come from its two sorted sets (live
runs by start, unsaved ones by end); a run both in Redis and in SQL (a failed run retried) is
shown once, as Redis has it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ..context import Context
from ..errors import UsageError
from ..model.records import parse_rq_date
from ..state.history import History, RunQuery, RunRow, matches, newer_first
from ..state.protocol import as_text

HEADER_FIELDS = ("start", "status", "created_at", "ended_at", "error")
SCAN_LIMIT = 5_000  # runs in Redis one page looks at, at most (a backlog larger than this
# shows its newest runs first; the rest appear as the page moves on)


@dataclass(frozen=True)
class RunPage:
    """One page of runs, newest first; ``cursor`` fetches the next one (None: the last)."""

    runs: list[RunRow]
    cursor: str | None


def encode_cursor(row: RunRow) -> str:
    """The cursor after ``row``: its creation time (microseconds) and id."""
    created = row.sort_key[0]
    return f"{int(created.timestamp() * 1_000_000)}_{row.run_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, run_id) from :func:`encode_cursor`'s text.

    Raises:
        UsageError: for text that is no cursor.
    """
    micros, _, run_id = cursor.partition("_")
    if not micros.lstrip("-").isdigit() or not run_id:
        raise UsageError(f"invalid page cursor {cursor!r}")
    return datetime.fromtimestamp(int(micros) / 1_000_000, UTC), run_id


def list_runs(
    context: Context, query: RunQuery, limit: int = 50, cursor: str | None = None
) -> RunPage:
    """A page of runs matching ``query``, newest first, after ``cursor``."""
    before = decode_cursor(cursor) if cursor else None
    in_redis = redis_runs(context, query, limit, before)
    rows = list(in_redis)
    held = [row.run_id for row in in_redis]
    if not query.live_only:
        rows += History(context.store).page(query, limit, before, exclude=held)
    page = newer_first(rows, limit + 1)
    more = len(page) > limit
    page = page[:limit]
    return RunPage(page, encode_cursor(page[-1]) if more and page else None)


def redis_runs(
    context: Context, query: RunQuery, limit: int, before: tuple[datetime, str] | None
) -> list[RunRow]:
    """Up to ``limit + 1`` runs Redis holds that match ``query``, older than ``before``."""
    connection, keys = context.connection, context.keys
    top: float | str = before[0].timestamp() if before else "+inf"
    bottom: float | str = query.since.timestamp() if query.since else "-inf"
    live = connection.zrevrangebyscore(keys.live_runs, top, bottom, start=0, num=SCAN_LIMIT)
    unsaved = connection.zrevrange(keys.unsaved_runs, 0, SCAN_LIMIT - 1)
    ids = list(dict.fromkeys(as_text(i) or "" for i in [*live, *unsaved]))
    if query.run_id:
        ids = [run_id for run_id in ids if run_id.startswith(query.run_id)]
    rows = [
        row
        for row in read_headers(context, ids)
        if row is not None and matches(row, query) and (before is None or row.sort_key < before)
    ]
    return newer_first(rows, limit + 1)


def read_headers(context: Context, run_ids: Sequence[str]) -> list[RunRow | None]:
    """The headers of runs in Redis, in one round trip (None for a run it no longer holds)."""
    pipe = context.connection.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hmget(context.keys.run(run_id), *HEADER_FIELDS)
    rows: list[RunRow | None] = []
    for run_id, values in zip(run_ids, pipe.execute(), strict=True):
        start, status, created, ended, error = (as_text(v) for v in values)
        if not status:
            rows.append(None)
            continue
        rows.append(
            RunRow(
                run_id=run_id,
                start=start or "",
                status=status,
                created_at=parse_rq_date(created),
                ended_at=parse_rq_date(ended),
                error=(error or None) and error[:300],
                live=True,
            )
        )
    return rows


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A point in time from ``30s``, ``15m``, ``1h``, ``2d``, ``1w`` (that long ago) or an ISO
    date (UTC when it names no zone).

    Raises:
        UsageError: for anything else.
    """
    now = now or datetime.now(UTC)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    number, unit = text[:-1], text[-1:]
    if unit in units and number.replace(".", "", 1).isdigit():
        return datetime.fromtimestamp(now.timestamp() - float(number) * units[unit], UTC)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--since {text!r}: expected a duration such as 30s, 15m, 1h, 2d or an ISO date"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed
