"""The trivial step every ezgraph benchmark node runs, with the harness's instrumentation."""

from __future__ import annotations

import os
from typing import Any

from redis import Redis

from ezgraph import current_step

from .harness import GRAPHS, mark_end, mark_start, sources

_connection: list[Redis] = []
# Computed once, as the plain-RQ baseline's step does (tasks_rq._SOURCES): found anew in every
# step, they cost a 1 -> 8 -> 1 step about 5 us that no system should be charged.
_SOURCES = {name: set(sources(graph)) for name, graph in GRAPHS.items()}


def _bench_redis() -> Redis:
    if not _connection:
        _connection.append(Redis.from_url(os.environ["REDIS_URL"]))
    return _connection[0]


def step(data: dict[str, Any]) -> dict[str, Any]:
    """Mark the run's start at its source and its end at its sink; otherwise do nothing."""
    ctx = current_step()
    name = data["graph"]
    if ctx.node in _SOURCES[name]:
        mark_start(_bench_redis())
    if not GRAPHS[name][ctx.node]:
        mark_end(_bench_redis(), int(data["run"]))
    return {}
