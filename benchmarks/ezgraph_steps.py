"""The trivial step every ezgraph benchmark node runs, with the harness's instrumentation."""

from __future__ import annotations

import os
from typing import Any

from redis import Redis

from ezgraph import current_step

from .harness import GRAPHS, mark_end, mark_start, sources

_connection: list[Redis] = []


def _bench_redis() -> Redis:
    if not _connection:
        _connection.append(Redis.from_url(os.environ["REDIS_URL"]))
    return _connection[0]


def step(data: dict[str, Any]) -> dict[str, Any]:
    """Mark the run's start at its source and its end at its sink; otherwise do nothing."""
    ctx = current_step()
    graph = GRAPHS[data["graph"]]
    if ctx.node in sources(graph):
        mark_start(_bench_redis())
    if not graph[ctx.node]:
        mark_end(_bench_redis(), int(data["run"]))
    return {}
