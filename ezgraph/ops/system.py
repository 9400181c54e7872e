"""The system at a glance: queues, workers and whether each worker is alive.

A worker is any RQ worker registered in Redis (stock ``rq worker`` or ``ezgraph worker``;
ezgraph's own also in ezgraph's workers set). It is *alive* when:

- an ezgraph worker: its heartbeat key (``<prefix>:alive:<name>``, refreshed every second)
  lives;
- a stock worker: its RQ hash lives (RQ lets it expire some minutes after the worker stops
  beating), and, when it runs on this machine, its process exists.

A worker that is not alive but still registered is *dead, not yet reaped*: its claimed or
started steps wait for a watchdog (any ``ezgraph worker``, or ``ezgraph reap --loop``).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from .. import rq_compat
from ..context import Context
from ..liveness import alive
from ..rq_compat import WorkerInfo
from ..state.protocol import as_text


@dataclass(frozen=True)
class WorkerView:
    """A worker, what kind it is, and whether it is alive (see the module doc)."""

    name: str
    queues: tuple[str, ...]
    state: str  # RQ's: idle, busy, started, suspended; "dead" when not alive
    kind: str  # "ezgraph" or "rq"
    alive: bool
    why_dead: str | None = None
    hostname: str = ""
    pid: int | None = None
    current_job: str | None = None
    last_heartbeat: str | None = None


def read_workers(context: Context) -> list[WorkerView]:
    """Every worker Redis knows, ezgraph's and stock ones, with its liveness."""
    infos = {info.name: info for info in rq_compat.workers(context.connection)}
    ours = {as_text(name) or "" for name in context.connection.smembers(context.keys.workers)}
    for name in ours - set(infos):  # gone from RQ's set, yet holding claims until reaped
        infos[name] = WorkerInfo(name, (), "?", "", None, None, None, None, registered=False)
    beating = alive(context.connection, context.keys, sorted(infos))
    here = socket.gethostname()
    views = []
    for name, info in sorted(infos.items()):
        kind = "ezgraph" if name in ours else "rq"
        why = _why_dead(info, kind, beating[name], here)
        views.append(
            WorkerView(
                name=name,
                queues=info.queues,
                state="dead" if why else info.state,
                kind=kind,
                alive=why is None,
                why_dead=why,
                hostname=info.hostname,
                pid=info.pid,
                current_job=info.current_job,
                last_heartbeat=info.last_heartbeat,
            )
        )
    return views


def _why_dead(info: WorkerInfo, kind: str, beating: bool, here: str) -> str | None:
    """Why a worker is not alive (None: it is)."""
    if beating:
        return None
    if kind == "ezgraph":
        return "its heartbeat stopped"
    if not info.registered:
        return "its RQ registration expired"
    if info.hostname == here and info.pid is not None and not _process_exists(info.pid):
        return f"its process {info.pid} is not running on this machine"
    return None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serving(workers: list[WorkerView], queue: str) -> list[WorkerView]:
    """The live workers that listen to ``queue``."""
    return [worker for worker in workers if worker.alive and queue in worker.queues]


def queue_names(context: Context, first: tuple[str, ...] = ()) -> list[str]:
    """The queues ``first`` (the graph's nodes, in graph order), then every other queue RQ
    knows, by name."""
    return list(dict.fromkeys([*first, *rq_compat.queue_names(context.connection)]))
