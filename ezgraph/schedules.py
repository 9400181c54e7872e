"""Schedules: submit a run at a start node on a cron expression (UTC), once per tick.

A schedule (name, cron expression, start node, payload) is kept in Redis, beside RQ's own
scheduled jobs. Any number of schedulers may run (every ``ezgraph worker``'s maintenance pass,
``ezgraph schedule run``): each tick of a schedule submits one run, whose id is derived from
the schedule and the tick, so a second scheduler's submit of it is refused by the run's own
atomic create, and a claim (``schedule:<name>:<tick>``) set after it spares the others the
attempt. A tick missed by more than ``Tuning.schedule_grace`` seconds (no scheduler ran) is
skipped, not caught up. Expressions are parsed by ``croniter``, the parser of RQ's own cron
(whose ``CronScheduler`` registers functions from a file in one process and enqueues plain RQ
jobs, with no guard against a second scheduler: it cannot serve here).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from croniter import croniter

from .client import GraphOrchestrator
from .context import Context
from .errors import EzgraphError, ScheduleNotFound, UsageError
from .model.payload import to_json
from .state.protocol import as_text

logger = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
RUN_IDS = uuid.UUID("8d6f4c1e-2b1a-4f3e-9c7d-5a0e6b2f1c30")  # namespace of scheduled run ids


@dataclass(frozen=True)
class Schedule:
    """A run submitted at ``start`` with ``data`` on every tick of ``cron`` (UTC)."""

    name: str
    cron: str
    start: str
    data: Mapping[str, Any]
    created_at: float  # epoch seconds: ticks before it do not fire

    def last_tick(self, now: float) -> int:
        """The newest tick before ``now`` (epoch seconds)."""
        return int(croniter(self.cron, now).get_prev(float))

    def next_tick(self, now: float) -> int:
        """The first tick after ``now`` (epoch seconds)."""
        return int(croniter(self.cron, now).get_next(float))

    def run_id(self, prefix: str, tick: int) -> str:
        """The id of the run this schedule submits for ``tick``: the same for every scheduler."""
        return uuid.uuid5(RUN_IDS, f"{prefix}:{self.name}:{tick}").hex

    def to_json(self) -> str:
        """As Redis keeps it."""
        return json.dumps(
            {
                "name": self.name,
                "cron": self.cron,
                "start": self.start,
                "data": self.data,
                "created_at": self.created_at,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Schedule:
        """As Redis keeps it."""
        fields = json.loads(text)
        return cls(
            fields["name"], fields["cron"], fields["start"], fields["data"], fields["created_at"]
        )


def check_cron(expression: str) -> str:
    """``expression`` when croniter reads it (5 fields, or 6 with seconds last).

    Raises:
        UsageError: naming the expression and what is wrong with it.
    """
    if not expression.strip() or not croniter.is_valid(expression):
        try:
            croniter(expression, 0.0)
            detail = "not a cron expression"
        except (ValueError, KeyError, TypeError) as error:
            detail = str(error).split("] ", 1)[-1] or "not a cron expression"
        raise UsageError(f"invalid cron expression {expression!r}: {detail}")
    return expression


class Schedules:
    """Add, list, remove and fire schedules on a context's Redis."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.keys = context.keys

    def add(self, name: str, cron: str, start: str, data: Mapping[str, Any]) -> Schedule:
        """Add a schedule; its first run is at its first tick from now.

        Raises:
            UsageError: for a bad name, cron expression, start node or payload.
            EzgraphError: when a schedule of that name exists.
        """
        if not NAME.match(name):
            raise UsageError(
                f"schedule name {name!r} may only hold letters, digits, '.', '-' and '_'"
                " (at most 100)"
            )
        check_cron(cron)
        graph = self.context.graph()
        if start not in graph.connections:
            known = ", ".join(graph.nodes)
            raise UsageError(f"unknown start module {start!r} (graph nodes: {known})")
        to_json(dict(data), "payload", self.context.settings.max_payload_bytes)
        schedule = Schedule(name, cron, start, dict(data), time.time())
        if not self.context.connection.hsetnx(self.keys.schedules, name, schedule.to_json()):
            raise EzgraphError(f"schedule {name!r} exists: remove it first")
        return schedule

    def remove(self, name: str) -> None:
        """Remove a schedule (runs it submitted go on).

        Raises:
            ScheduleNotFound: when there is none of that name.
        """
        pipe = self.context.connection.pipeline()
        pipe.hdel(self.keys.schedules, name)
        pipe.hdel(self.keys.schedules_fired, name)
        if not pipe.execute()[0]:
            raise ScheduleNotFound(f"no schedule named {name!r}")

    def all(self) -> list[Schedule]:
        """Every schedule, by name."""
        found = self.context.connection.hgetall(self.keys.schedules)
        return sorted((Schedule.from_json(v) for v in found.values()), key=lambda s: s.name)

    def fired(self) -> dict[str, tuple[int, str]]:
        """Each schedule's last fired tick and what it gave (a run id, or an error)."""
        found = self.context.connection.hgetall(self.keys.schedules_fired)
        fired = {}
        for name, value in found.items():
            tick, _, what = (as_text(value) or "").partition(" ")
            fired[as_text(name) or ""] = (int(tick), what)
        return fired

    def fire_due(self, now: float | None = None) -> list[tuple[str, int, str]]:
        """Submit the run of every schedule whose newest tick has not fired; returns (name,
        tick, run id) of the runs this call submitted."""
        now = time.time() if now is None else now
        grace = self.context.tuning.schedule_grace
        due = []
        for schedule in self.all():
            tick = schedule.last_tick(now)
            if tick >= schedule.created_at and now - tick <= grace:
                due.append((schedule, tick))
        if not due:
            return []
        claims = [self.keys.schedule_tick(s.name, tick) for s, tick in due]
        pipe = self.context.connection.pipeline(transaction=False)
        for claim in claims:
            pipe.exists(claim)
        taken = pipe.execute()
        submitted = []
        for (schedule, tick), claim, done in zip(due, claims, taken, strict=True):
            if not done:
                run_id = self._fire(schedule, tick, claim, int(grace) * 2 + 60)
                if run_id:
                    submitted.append((schedule.name, tick, run_id))
        return submitted

    def _fire(self, schedule: Schedule, tick: int, claim: str, claim_ttl: int) -> str | None:
        """Submit the run of one tick; returns its id, None when another scheduler did."""
        run_id = schedule.run_id(self.keys.prefix, tick)
        orchestrator = GraphOrchestrator(context=self.context)
        outcome: str | None = run_id
        try:
            orchestrator.submit(schedule.start, schedule.data, run_id=run_id)
            logger.info("schedule %s: tick %d submitted run %s", schedule.name, tick, run_id)
        except UsageError as error:
            if self.context.connection.exists(self.keys.run(run_id)):
                return None  # another scheduler submitted it a moment ago
            # The graph changed since the schedule was added: say so where `list` shows it.
            logger.error("schedule %s: tick %d not submitted: %s", schedule.name, tick, error)
            outcome, run_id = f"error: {error}", ""
        pipe = self.context.connection.pipeline()
        pipe.set(claim, run_id or "error", ex=claim_ttl)
        if self.context.connection.hexists(self.keys.schedules, schedule.name):
            pipe.hset(self.keys.schedules_fired, schedule.name, f"{tick} {outcome}")
        pipe.execute()
        return run_id or None


def loop(context: Context, stopped: threading.Event, every: float = 1.0) -> None:
    """``ezgraph schedule run``: fire the due schedules every ``every`` seconds until
    ``stopped``; a failed pass (Redis away) is logged and tried again."""
    schedules = Schedules(context)
    while not stopped.is_set():
        try:
            schedules.fire_due()
        except Exception:
            logger.exception("schedule pass failed; trying again")
        stopped.wait(every)


def when(epoch: float) -> str:
    """An epoch time as ``2026-12-03 14:05:00`` UTC."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")
