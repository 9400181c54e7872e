"""The steps of the map benchmark: trivial, so the figures are ezgraph's own cost."""

from __future__ import annotations

from typing import Any

from ezgraph import Map


def split(data: dict[str, Any]) -> Map:
    """Map ``item`` over ``range(n)``, or over the run's own ``items``."""
    return Map("item", data["items"] if "items" in data else list(range(int(data["n"]))))


def item(data: dict[str, Any]) -> dict[str, Any]:
    """One item: its output is the item."""
    return {"i": data["item"]}


def gather(data: dict[str, Any]) -> dict[str, Any]:
    """Check the outputs arrived in item order."""
    outputs = data["item"]
    in_order = all(output["i"] == n for n, output in enumerate(outputs))
    return {"count": len(outputs), "in_order": in_order}
