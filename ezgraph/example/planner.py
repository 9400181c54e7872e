"""Turn a classified question (intent, entity, period) into a parameterised SQL query plan.

Table and column names come only from :data:`TABLES`, never from the question, and every value
is a bound parameter, so the plan is safe to execute as it stands.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

# entity -> the column that can be added up for a "sum" question, or None when nothing can.
TABLES: dict[str, str | None] = {
    "orders": "total_amount",
    "sales": "amount",
    "products": "price",
    "customers": None,
    "users": None,
}
INTENTS = ("count", "sum", "list", "compare")
LIST_LIMIT = 100
# A comparison needs a window; a month is the usual reporting one.
DEFAULT_COMPARE_PERIOD = "this_month"

_LAST_DAYS = re.compile(r"last_([1-9][0-9]*)_days")
# period -> (calendar unit, how many units back from the one containing the reference date).
_CALENDAR_PERIODS: dict[str, tuple[str, int]] = {
    "today": ("day", 0),
    "yesterday": ("day", 1),
    "this_week": ("week", 0),
    "last_week": ("week", 1),
    "this_month": ("month", 0),
    "last_month": ("month", 1),
    "this_year": ("year", 0),
    "last_year": ("year", 1),
}


def process(data: dict[str, Any]) -> dict[str, Any]:
    """Return ``{"plan": ...}`` for the question's intent, entity and period."""
    intent = data.get("intent")
    entity = data.get("entity")
    if intent not in INTENTS:
        raise ValueError(f"cannot plan intent {intent!r}; expected one of {', '.join(INTENTS)}")
    if entity not in TABLES:
        raise ValueError(f"cannot plan entity {entity!r}; expected one of {', '.join(TABLES)}")
    period = data.get("period")
    now = reference_time(data.get("now"))
    if intent == "compare":
        return {"plan": _comparison_plan(entity, period or DEFAULT_COMPARE_PERIOD, now)}
    return {"plan": _plan(intent, entity, period, now)}


def reference_time(value: object) -> datetime:
    """Parse ``value`` (an ISO 8601 string, or None for the current time) as an aware datetime.

    A date-time without an offset is taken to be UTC.
    """
    if value is None:
        return datetime.now(UTC)
    if not isinstance(value, str):
        raise TypeError(f"'now' must be an ISO 8601 string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"'now' must be an ISO 8601 date-time, got {value!r}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def period_bounds(period: str | None, now: datetime) -> tuple[datetime, datetime] | None:
    """Return the half-open window ``[start, end)`` that ``period`` names, seen from ``now``.

    Windows are whole calendar units in ``now``'s time zone; weeks start on Monday, and
    ``last_N_days`` is the N days ending with today. ``None`` means no period (no window).

    Raises:
        ValueError: for a period this planner does not know.
    """
    if period is None:
        return None
    days = _LAST_DAYS.fullmatch(period)
    if days is not None:
        start, end = _calendar_unit("day", now)
        return start - timedelta(days=int(days.group(1)) - 1), end
    if period not in _CALENDAR_PERIODS:
        raise ValueError(f"unknown period {period!r}")
    unit, back = _CALENDAR_PERIODS[period]
    start, end = _calendar_unit(unit, now)
    for _ in range(back):
        start, end = _calendar_unit(unit, start - timedelta(microseconds=1))
    return start, end


def previous_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """Return the window just before ``period``'s, of the same calendar unit or length."""
    bounds = period_bounds(period, now)
    if bounds is None:
        raise ValueError("a comparison needs a period")
    start, end = bounds
    if period in _CALENDAR_PERIODS:
        # Months and years differ in length: step back one unit rather than one duration.
        return _calendar_unit(_CALENDAR_PERIODS[period][0], start - timedelta(microseconds=1))
    return start - (end - start), start


def _plan(intent: str, entity: str, period: str | None, now: datetime) -> dict[str, Any]:
    measure = TABLES[entity] if intent == "sum" else None
    if intent == "sum" and measure is None:
        # Nothing to add up on a customer or a user: how many of them is the nearest answer.
        intent = "count"
    select = {
        "count": "SELECT COUNT(*)",
        "sum": f"SELECT SUM({measure})",
        "list": "SELECT *",
    }[intent]
    filters: list[dict[str, Any]] = []
    params: dict[str, str] = {}
    where = ""
    bounds = period_bounds(period, now)
    if bounds is not None:
        params = {"start": bounds[0].isoformat(), "end": bounds[1].isoformat()}
        filters = _window_filters(params["start"], params["end"])
        where = " WHERE created_at >= :start AND created_at < :end"
    tail = f" ORDER BY created_at DESC LIMIT {LIST_LIMIT}" if intent == "list" else ""
    return {
        "table": entity,
        "aggregate": None if intent == "list" else intent,
        "measure": measure,
        "period": period,
        "filters": filters,
        "sql": f"{select} FROM {entity}{where}{tail}",
        "params": params,
    }


def _comparison_plan(entity: str, period: str, now: datetime) -> dict[str, Any]:
    bounds = period_bounds(period, now)
    if bounds is None:
        raise ValueError("a comparison needs a period")
    previous_start, _ = previous_bounds(period, now)
    params = {
        "previous_start": previous_start.isoformat(),
        "start": bounds[0].isoformat(),
        "end": bounds[1].isoformat(),
    }
    # One scan over both windows; CASE rather than FILTER so SQLite and PostgreSQL both run it.
    sql = (
        "SELECT SUM(CASE WHEN created_at >= :start THEN 1 ELSE 0 END) AS current,"
        " SUM(CASE WHEN created_at < :start THEN 1 ELSE 0 END) AS previous"
        f" FROM {entity} WHERE created_at >= :previous_start AND created_at < :end"
    )
    return {
        "table": entity,
        "aggregate": "count",
        "measure": None,
        "period": period,
        "filters": _window_filters(params["previous_start"], params["end"]),
        "sql": sql,
        "params": params,
    }


def _window_filters(start: str, end: str) -> list[dict[str, Any]]:
    return [
        {"column": "created_at", "op": ">=", "value": start},
        {"column": "created_at", "op": "<", "value": end},
    ]


def _calendar_unit(unit: str, moment: datetime) -> tuple[datetime, datetime]:
    day = moment.date()
    if unit == "day":
        first, after = day, day + timedelta(days=1)
    elif unit == "week":
        first = day - timedelta(days=day.weekday())
        after = first + timedelta(days=7)
    elif unit == "month":
        first = day.replace(day=1)
        after = date(day.year + day.month // 12, day.month % 12 + 1, 1)
    else:
        first, after = date(day.year, 1, 1), date(day.year + 1, 1, 1)
    return _midnight(first, moment), _midnight(after, moment)


def _midnight(day: date, like: datetime) -> datetime:
    return datetime.combine(day, time.min, tzinfo=like.tzinfo)
