"""Upper-cases the question."""

from typing import Any

from ezgraph import ModuleWorker


class Shout(ModuleWorker):
    def process(self, data: dict[str, Any]) -> dict[str, Any]:
        return {"shouted": data["pergunta"].upper()}
