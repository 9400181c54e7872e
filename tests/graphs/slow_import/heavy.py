"""A module with a slow import: its step counts itself in the payload's ledger."""

from __future__ import annotations

import time
from typing import Any

from redis import Redis

from ezgraph import current_step


def _hold_the_interpreter(seconds: float) -> None:
    """Keep the GIL for ``seconds`` in one C call, as a heavy native import does (no other
    thread of the process runs meanwhile)."""
    began = time.perf_counter()
    sum(range(1_000_000))
    per_million = time.perf_counter() - began
    sum(range(int(seconds / per_million * 1_000_000)))


_hold_the_interpreter(4.5)  # as a heavy library would, at import


def process(data: dict[str, Any]) -> dict[str, Any]:
    ctx = current_step()
    Redis.from_url(data["ledger_url"]).rpush(data["ledger_key"], f"{ctx.run_id}:{ctx.step}")
    return {"heavy": True}
