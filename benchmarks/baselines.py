"""Baseline systems: hand-chained plain RQ, and Celery canvases, over the same Redis db.

Both implement :class:`benchmarks.harness.System`. ``graph`` is a key of
:data:`benchmarks.harness.GRAPHS`; the db is FLUSHDB'd before and after every measurement.

How a throughput measurement is timed (honestly, and the same way for both)
    All runs' first steps are submitted *before* any worker may execute anything, and the clock
    is read by the steps themselves: the source step of every run records its start
    (``ZADD ... LT`` keeps the minimum) and the sink step its end (``ZADD ... GT`` keeps the
    maximum). ``seconds = last end - first start``. Submission, interpreter start-up, imports,
    the harness's 20 ms polling and worker shutdown are therefore outside the window; each step's
    queueing, dequeueing, result storing and successor enqueueing are inside it.

    * PlainRQ: ``workers`` ``SimpleWorker`` subprocesses are started on empty queues; each builds
      its worker (imports and connection done), INCRs ``bench:ready`` and blocks on
      ``BLPOP bench:go``. Once all are ready the runs are enqueued, then one ``go`` token per
      worker is pushed, so all workers begin together. Workers are *not* in burst mode: a burst
      worker exits as soon as the queues are momentarily empty, which happens in a chain while
      the other worker is still producing the successor, so the tail would run on one worker.
      Queues are listed sink-first, so a worker prefers finishing runs over starting new ones.
    * CeleryChain: the canvases are submitted to the (declared, empty of consumers) queues, then
      one ``celery worker -P prefork -c workers`` is started. The prefork children are forked
      before the consumer starts, so both are available from the first task on.

    Workers' own start-up and shutdown are outside the window, but their registration commands
    are in the command count (a fixed cost per worker, well under 1% of a 1000-run measurement).

Redis commands per step count submission plus processing, minus the harness's own commands and
the 3 instrumentation commands per run (see :mod:`benchmarks.harness`). Celery's submission is
taken as Celery does it by default: the producer SUBSCRIBEs to the result channel of each task it
sends (and UNSUBSCRIBEs when a dropped chain result is collected; a chord's header results stay
subscribed, see :func:`benchmarks.tasks_celery.forget_pending_results`).

Idle latency (``latency(n)``): workers are started and left idle on the chain2 queues; then one
run at a time is submitted and the harness blocks on ``BLPOP bench:done`` until the sink step has
pushed it. Times are wall-clock in the harness, submit to wake-up.
"""

from __future__ import annotations

import importlib.util
import time
from subprocess import Popen

from .harness import (
    DONE_KEY,
    GO_KEY,
    GRAPHS,
    CommandMeter,
    CpuMeter,
    Measurement,
    WorkerSystem,
    check_alive,
    flush_bench_db,
    latency,
    make_measurement,
    python_args,
    read_window,
    redis_url,
    spawn,
    steps_per_run,
    topological_layers,
    wait_done,
    wait_ready,
)

SETTLE_SECONDS = 0.2  # after the last run: let the last jobs' bookkeeping reach Redis
LATENCY_WARMUP = 5


def _done_timeout(graph: str, runs: int) -> float:
    return 60.0 + runs * steps_per_run(GRAPHS[graph]) / 20.0  # 20 steps/s would be a failure


def _sink_first_nodes(graph: str) -> list[str]:
    return [node for layer in reversed(topological_layers(GRAPHS[graph])) for node in layer]


def _measure(
    system: WorkerSystem,
    graph: str,
    runs: int,
    procs: list[Popen[bytes]],
    meter: CommandMeter,
    cpu: CpuMeter | None = None,
) -> Measurement:
    """Wait for the last run, let its bookkeeping settle, and read the window and the meters."""
    rss = wait_done(system.conn, runs, procs, meter, _done_timeout(graph, runs))
    time.sleep(SETTLE_SECONDS)
    used = cpu.stop() if cpu is not None else None
    commands = meter.stop(runs)
    seconds = read_window(system.conn)
    return make_measurement(system.name, graph, runs, seconds, commands, rss, meter.problems, used)


class PlainRQ(WorkerSystem):
    """RQ ``SimpleWorker`` subprocesses; each task enqueues its successors by hand."""

    name = "plain-rq"

    def __init__(self, url: str | None = None, log_level: str = "WARNING") -> None:
        super().__init__(url)
        self.log_level = log_level  # ``rq worker`` defaults to INFO: two log lines per job

    def _start_workers(self, graph: str, workers: int) -> list[Popen[bytes]]:
        from .tasks_rq import queue_name

        queues = [queue_name(node) for node in _sink_first_nodes(graph)]
        code = "from benchmarks.tasks_rq import worker_main; worker_main()"
        procs = []
        for i in range(workers):
            args = python_args("-c", code, "--url", self.url, "--log-level", self.log_level)
            procs.append(spawn([*args, *queues], f"{self.name}-{graph}-{i}.log"))
            self._procs.append(procs[-1])
        wait_ready(self.conn, workers, procs)
        return procs

    def run(self, graph: str, runs: int, workers: int = 2) -> Measurement:
        from .tasks_rq import enqueue_run

        flush_bench_db(self.conn)
        procs: list[Popen[bytes]] = []
        try:
            procs = self._start_workers(graph, workers)
            meter = CommandMeter(self.conn)
            for run in range(runs):
                enqueue_run(self.conn, graph, run)
            cpu = CpuMeter(self.conn, procs, meter)
            self.conn.rpush(GO_KEY, *["go"] * workers)
            meter.count_own()
            return _measure(self, graph, runs, procs, meter, cpu)
        finally:
            self._stop_workers(procs)
            flush_bench_db(self.conn)

    def latency(self, n: int) -> list[tuple[str, float, float]]:
        from .tasks_rq import enqueue_run

        flush_bench_db(self.conn)
        procs: list[Popen[bytes]] = []
        counter = iter(range(1 << 30))
        try:
            procs = self._start_workers("chain2", 2)
            self.conn.rpush(GO_KEY, "go", "go")

            def submit_and_wait() -> None:
                enqueue_run(self.conn, "chain2", next(counter))
                if self.conn.blpop([DONE_KEY], timeout=30) is None:
                    check_alive(procs)
                    raise TimeoutError("run did not finish within 30s")

            return [(self.name, *latency(submit_and_wait, n, LATENCY_WARMUP))]
        finally:
            self._stop_workers(procs)
            flush_bench_db(self.conn)


class CeleryChain(WorkerSystem):
    """One Celery worker, prefork pool of ``workers`` processes; chains and chords."""

    name = "celery"

    def __init__(self, url: str | None = None, log_level: str = "WARNING") -> None:
        super().__init__(url)
        self.log_level = log_level

    def available(self) -> bool:
        return importlib.util.find_spec("celery") is not None

    def setup(self) -> None:
        if self.url != redis_url():
            raise ValueError("CeleryChain reads its URL from BENCH_REDIS_URL at import time")
        super().setup()

    def _start_worker(self, graph: str, workers: int) -> Popen[bytes]:
        from .tasks_celery import queue_name

        queues = ",".join(queue_name(node) for node in GRAPHS[graph])
        args = python_args(
            "-m", "celery", "-A", "benchmarks.tasks_celery", "worker",
            "-c", str(workers), "-P", "prefork", "-l", self.log_level, "-n", "bench@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-Q", queues,
        )  # fmt: skip
        proc = spawn(args, f"{self.name}-{graph}.log")
        self._procs.append(proc)
        return proc

    def _stop_workers(self, procs: list[Popen[bytes]]) -> None:
        from .tasks_celery import forget_pending_results

        super()._stop_workers(procs)
        forget_pending_results()

    def run(self, graph: str, runs: int, workers: int = 2) -> Measurement:
        from .tasks_celery import declare_queues, enqueue_run

        flush_bench_db(self.conn)
        procs: list[Popen[bytes]] = []
        try:
            declare_queues(graph)
            meter = CommandMeter(self.conn)
            for run in range(runs):
                enqueue_run(graph, run)
            procs = [self._start_worker(graph, workers)]
            return _measure(self, graph, runs, procs, meter)
        finally:
            self._stop_workers(procs)
            flush_bench_db(self.conn)

    def latency(self, n: int) -> list[tuple[str, float, float]]:
        from .tasks_celery import declare_queues, enqueue_run

        flush_bench_db(self.conn)
        procs: list[Popen[bytes]] = []
        counter = iter(range(1 << 30))
        try:
            declare_queues("chain2")
            procs = [self._start_worker("chain2", 2)]
            wait_ready(self.conn, 1, procs)

            def submit_and_wait() -> None:
                enqueue_run("chain2", next(counter))
                if self.conn.blpop([DONE_KEY], timeout=30) is None:
                    check_alive(procs)
                    raise TimeoutError("run did not finish within 30s")

            return [(self.name, *latency(submit_and_wait, n, LATENCY_WARMUP))]
        finally:
            self._stop_workers(procs)
            flush_bench_db(self.conn)
