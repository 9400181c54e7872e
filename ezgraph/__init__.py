"""ezgraph: run a graph of plain Python modules over RQ queues, every run kept in SQL."""

from __future__ import annotations

__version__ = "0.2.0"

from .client import GraphOrchestrator, status, submit
from .errors import (
    ConnectionFailed,
    EzgraphError,
    GraphError,
    InvalidRunOperation,
    PayloadError,
    RunNotFound,
    StepError,
    SubmitInterrupted,
    UsageError,
)
from .model.module_api import Map, Route, StepContext, Wait, current_step
from .settings import Settings
from .workers.module_worker import ModuleWorker

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
    "SubmitInterrupted",
    "UsageError",
    "Wait",
    "__version__",
    "current_step",
    "status",
    "submit",
]
