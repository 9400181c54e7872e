"""Crash points for fault-injection tests: ``EZGRAPH_CRASH_AT=<point>:<step>`` makes the process
die (``os._exit``, like a SIGKILL: no cleanup, no ``finally``) the first time it reaches that
point for that step. Points: ``after_module`` (the module returned, nothing recorded),
``after_wait`` (a step recorded waiting for a signal, or given one sent before, its RQ job
not yet finished), ``after_signal`` (a signal kept in its run's mailbox, its waiting step not
yet resumed by the sender), ``after_record`` (recorded and successors created, the RQ job not
yet finished), ``map_chunk`` (before a map's next chunk of instances is created; its "step" is
``<run_id>-<node>``), and ``before_persist:run`` (a run ended in Redis, not yet written to SQL).
"""

from __future__ import annotations

import os

from redis import Redis

from .state.keys import Keys

ENV = "EZGRAPH_CRASH_AT"
_SPEC = os.environ.get(ENV)  # read once: the hook is set in a process's environment at its start


def crash_point(connection: Redis, keys: Keys, point: str, step: str) -> None:
    """Die here if the environment asks for it and this point has not crashed before."""
    if _SPEC is None or f"{point}:{step}" != _SPEC:
        return
    if connection.set(keys.crashed(point, step), os.getpid(), nx=True):
        os._exit(137)
