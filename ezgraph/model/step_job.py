"""What a step's RQ job carries: the keyword arguments of ``ezgraph.step.run_step``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def step_name(node: str, index: int | None) -> str:
    """A step's name in its run: the node, or ``node-<index>`` for a mapped instance."""
    return node if index is None else f"{node}-{index}"


def job_id(run_id: str, step: str) -> str:
    """A step's RQ job id: ``<run_id>-<step>``, deterministic, so a step's job is created once
    (RQ ids allow ``[A-Za-z0-9_-]`` only)."""
    return f"{run_id}-{step}"


@dataclass(frozen=True)
class StepJob:
    """One step's job: its run, node and graph package, and its input.

    A step gets its input in its job (``state``), or, for a join (or the node after a mapped
    node), reads it from Redis as it starts (``reads_join_input``). A mapped instance gets its
    ``index`` and ``item`` (under ``item_key`` in its data), and reads the state its mapper
    kept (``reads_mapper_state``: one copy in Redis, not one per instance).
    """

    run_id: str
    node: str
    package: str
    state: dict[str, Any] | None = None
    reads_join_input: bool = False
    index: int | None = None
    item: Any = None
    item_key: str = "item"
    reads_mapper_state: bool = False
    graph_version: str | None = None  # the version of the graph its run started on
    # With tracing on: the run's trace context and the span of the step that created it.
    trace: dict[str, str] | None = None

    @property
    def step(self) -> str:
        """The step's name in its run (:func:`step_name`)."""
        return step_name(self.node, self.index)

    @property
    def job_id(self) -> str:
        """The step's RQ job id (:func:`job_id`)."""
        return job_id(self.run_id, self.step)

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments ``run_step`` is called with (pickled into the job)."""
        kwargs: dict[str, Any] = {"run_id": self.run_id, "node": self.node, "package": self.package}
        if self.graph_version is not None:
            kwargs["version"] = self.graph_version
        if self.reads_join_input:
            kwargs["join"] = True
        elif self.reads_mapper_state:
            kwargs["mapper_state"] = True
        else:
            kwargs["state"] = self.state
        if self.index is not None:
            kwargs.update(index=self.index, item=self.item, item_key=self.item_key)
        if self.trace is not None:
            kwargs["trace"] = self.trace
        return kwargs

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> StepJob:
        """The step a job's keyword arguments describe (``gather`` and ``key``: the names
        jobs queued by ezgraph 0.1 use)."""
        return cls(
            run_id=kwargs["run_id"],
            node=kwargs["node"],
            package=kwargs["package"],
            state=kwargs.get("state"),
            reads_join_input=bool(kwargs.get("join", kwargs.get("gather", False))),
            index=kwargs.get("index"),
            item=kwargs.get("item"),
            item_key=kwargs.get("item_key", kwargs.get("key", "item")),
            reads_mapper_state=bool(kwargs.get("mapper_state", False)),
            graph_version=kwargs.get("version"),
            trace=kwargs.get("trace"),
        )
