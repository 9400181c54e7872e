"""The RQ job function every ezgraph step calls: ``ezgraph.step.run_step``.

It is pickled by name into every queued job, so it keeps this path and accepts the keyword
arguments of every job ezgraph ever queued. Run by a stock RQ worker, it runs the step and
records its end (:mod:`ezgraph.completion`) with that process's duties
(:class:`~ezgraph.workers.stock.StockProcess`); ezgraph's own worker never calls it.
"""

from __future__ import annotations

from typing import Any

from rq.job import get_current_job

from .errors import StepError
from .model.step_job import StepJob
from .workers.stock import StockProcess


def run_step(run_id: str, node: str, package: str, **kwargs: Any) -> dict[str, Any]:
    """Run one step of one run; returns its output (the RQ job's result)."""
    rq_job = get_current_job()
    if rq_job is None:
        raise StepError("ezgraph.step.run_step runs inside an RQ job")
    job = StepJob.from_kwargs({"run_id": run_id, "node": node, "package": package, **kwargs})
    return StockProcess.for_rq_job(rq_job).run(job, rq_job)
