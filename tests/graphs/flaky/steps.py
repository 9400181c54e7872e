"""Step functions that fail until the test allows them to succeed."""

from __future__ import annotations

from typing import Any

from redis import Redis

from ezgraph import current_step


def flaky(data: dict[str, Any]) -> dict[str, Any]:
    """Count this execution in the ledger; fail unless the key ``flaky:<run_id>`` exists."""
    ctx = current_step()
    with Redis.from_url(data["ledger_url"]) as redis:
        redis.rpush(data["ledger_key"], f"{ctx.run_id}:{ctx.step}")
        if not redis.exists(f"flaky:{ctx.run_id}"):
            raise RuntimeError(f"{ctx.step} fails until flaky:{ctx.run_id} exists")
    return {ctx.step: "ran"}


def flaky_square(data: dict[str, Any]) -> dict[str, Any]:
    """Square this instance's item, counting it; an item in ``flaky_items`` fails as ``flaky``."""
    ctx = current_step()
    with Redis.from_url(data["ledger_url"]) as redis:
        redis.rpush(data["ledger_key"], f"{ctx.run_id}:{ctx.step}")
        if data["item"] in data["flaky_items"] and not redis.exists(f"flaky:{ctx.run_id}"):
            raise RuntimeError(f"{ctx.step} fails until flaky:{ctx.run_id} exists")
    return {"value": data["item"] ** 2}
