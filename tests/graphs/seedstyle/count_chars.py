"""Counts the shouted question's characters."""

from typing import Any

from ezgraph import ModuleWorker


class CountChars(ModuleWorker):
    def process(self, data: dict[str, Any]) -> dict[str, Any]:
        return {"chars": len(data["shouted"])}
