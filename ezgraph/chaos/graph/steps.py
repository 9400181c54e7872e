"""The chaos graph's one step function: count the execution, work a little, write the effect."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ezgraph import Settings, current_step
from ezgraph.connection import connect

# The side effect and its guard in one atomic call: written once per idempotency key.
_EFFECT = """
if redis.call('SET', KEYS[1], ARGV[2], 'NX') then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

# The audit stalls and restarts its Redis, where the ledger lives too: a ledger write is sent
# again until Redis answers (each is safe twice), so the audit itself never fails a step.
LEDGER_PATIENCE = 120.0

_connection: list[Redis] = []  # this worker's connection to the ledger, made once
T = TypeVar("T")


def work(data: dict[str, Any]) -> dict[str, Any]:
    """Count this execution, sleep ``work_ms`` (±50%), then write the step's effect once."""
    step = current_step()
    if not _connection:  # the audit's Redis, as this worker's settings name it
        _connection.append(connect(Settings.from_env(), check=False))
    connection = _connection[0]
    prefix = data["ledger_prefix"]
    execution = f"{step.idempotency_key}|{uuid.uuid4().hex}"  # once, however often it is sent
    _patiently(lambda: connection.hset(f"{prefix}:executions", execution, 1))
    time.sleep(float(data.get("work_ms", 20)) / 1000 * random.uniform(0.5, 1.5))
    _patiently(
        lambda: connection.eval(
            _EFFECT,
            2,
            f"{prefix}:done:{step.idempotency_key}",
            f"{prefix}:effects",
            step.idempotency_key,
            step.attempt,
        )
    )
    return {step.node: step.attempt}


def _patiently(call: Callable[[], T]) -> T:
    deadline = time.monotonic() + LEDGER_PATIENCE
    while True:
        try:
            return call()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
