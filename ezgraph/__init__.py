"""ezgraph: run a graph of plain Python modules over RQ queues, every run kept in SQL."""

from __future__ import annotations

from .control import Map, Route, StepContext, current_step
from .errors import (
    ConnectionFailed,
    EzgraphError,
    GraphError,
    InvalidRunOperation,
    PayloadError,
    RunNotFound,
    StepError,
    UsageError,
)
from .orchestrator import GraphOrchestrator, status, submit
from .settings import Settings
from .worker import ModuleWorker

__all__ = [
    "ConnectionFailed",
    "EzgraphError",
    "GraphError",
    "GraphOrchestrator",
    "InvalidRunOperation",
    "Map",
    "ModuleWorker",
    "PayloadError",
    "Route",
    "RunNotFound",
    "Settings",
    "StepContext",
    "StepError",
    "UsageError",
    "current_step",
    "status",
    "submit",
]
