"""ezgraph's benchmark: plain RQ, ezgraph on stock RQ workers, ezgraph's own worker and Celery,
against the same Redis, in one run.

    python -m benchmarks              # 1000 runs per measurement, 3 interleaved repetitions
    python -m benchmarks --quick      # 100 runs, 1 repetition: keeps the benchmark working in CI
    python -m benchmarks --scaling    # also ezgraph-fast on chain2 with 1, 2 and 4 workers
    python -m benchmarks --systems plain-rq ezgraph-stock --graphs chain2 --reps 15
                                      # one comparison, with enough repetitions to see past noise
    python -m benchmarks --dashboard  # only the dashboard's pages over 100,000 runs in SQL
    python -m benchmarks --soak 300   # chain2 at 70% of its maximum rate, Redis memory watched
    python -m benchmarks --scale      # map width, worst Redis stall, bytes per run
    python -m benchmarks --submit     # only submission speed from one process (no workers)

Graphs: chain2 (a -> b), chain5, fanin (1 -> 8 -> 1). It prints steps/s, runs/s, the ratio to
plain RQ in the same run, Redis commands per step, worker and Redis CPU per step, worker RSS,
and the p50/p99 latency of single 2-node runs on idle workers. ezgraph's runs count as done
only once persisted to SQL.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from collections.abc import Sequence

import rq

from . import dashboard, scale, soak, submission
from .baselines import CeleryChain, PlainRQ
from .ezgraph_systems import Ezgraph
from .harness import (
    DEFAULT_GRAPHS,
    GRAPHS,
    Measurement,
    System,
    format_latency,
    format_rows,
    group_reps,
    median_of,
)
from .run_baselines import measure_available, run_systems

SYSTEMS = ("plain-rq", "ezgraph-stock", "ezgraph-fast", "ezgraph-fast-pg", "celery")


def ratio_table(measurements: Sequence[Measurement]) -> str:
    """Median steps/s of each system over plain RQ's, per graph; the range of that ratio over
    the repetitions, each against plain RQ's run of the same repetition (they are interleaved);
    and the comparison in CPU per step (workers + Redis), which the machine's drift moves less
    than the wall clock."""
    groups = group_reps(measurements)
    medians = {key: median_of(reps) for key, reps in groups.items()}
    rows = []
    for (system, graph), med in medians.items():
        base = medians.get(("plain-rq", graph))
        ratio = f"{med.steps_per_s / base.steps_per_s:.2f}x" if base else "-"
        reps, plain_reps = groups[(system, graph)], groups.get(("plain-rq", graph), [])
        paired = []
        if len(reps) == len(plain_reps):
            paired = [r.steps_per_s / p.steps_per_s for r, p in zip(reps, plain_reps, strict=True)]
        spread = f"{min(paired):.2f}-{max(paired):.2f}" if paired else "-"
        cost = _cpu(med)
        cpu_ratio = _times(cost / _cpu(base)) if base else "-"
        chain = medians.get((system, "chain2"))
        per_step = ""
        if chain and graph == "fanin":
            per_step = f"{chain.steps_per_s / med.steps_per_s:.2f} wall"
            if not math.isnan(cpu_vs_chain := cost / _cpu(chain)):
                per_step += f", {cpu_vs_chain:.2f} CPU"
        rows.append(
            [
                f"{system}/{graph}",
                f"{med.steps_per_s:.0f}",
                ratio,
                spread,
                "-" if math.isnan(cost) else f"{cost:.0f}",
                cpu_ratio,
                per_step,
            ]
        )
    return format_rows(
        [
            "system/graph",
            "steps/s",
            "vs plain RQ",
            "(reps)",
            "CPU us/step",
            "CPU/step vs plain RQ",
            "fanin step cost / chain2 step",
        ],
        rows,
    )


def postgres_table(measurements: Sequence[Measurement]) -> str:
    """Per graph, the ezgraph worker's steps/s with runs written to PostgreSQL over its figure
    with SQLite: the median, and the range of the ratio repetition by repetition (each
    against the SQLite run of the same repetition; target 0.8x). Empty without both."""
    groups = group_reps(measurements)
    rows = []
    for (system, graph), reps in groups.items():
        sqlite = groups.get(("ezgraph-fast", graph))
        if system != "ezgraph-fast-pg" or not sqlite:
            continue
        ratio = median_of(reps).steps_per_s / median_of(sqlite).steps_per_s
        paired = [p.steps_per_s / s.steps_per_s for p, s in zip(reps, sqlite, strict=False)]
        rows.append(
            [
                graph,
                f"{median_of(reps).steps_per_s:.0f}",
                f"{median_of(sqlite).steps_per_s:.0f}",
                f"{ratio:.2f}x",
                f"{min(paired):.2f}-{max(paired):.2f}",
                "met" if ratio >= 0.8 else "NOT met",
            ]
        )
    header = ["graph", "PostgreSQL steps/s", "SQLite steps/s", "ratio", "(reps)", ">= 0.8x"]
    return format_rows(header, rows) if rows else ""


def _cpu(measurement: Measurement) -> float:
    """Worker + Redis CPU per step (NaN when not measured)."""
    return measurement.worker_cpu_us + measurement.redis_cpu_us


def _times(ratio: float) -> str:
    return "-" if math.isnan(ratio) else f"{ratio:.2f}x"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, measure, print the tables."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--runs", type=int, default=1000, help="runs per measurement")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (medians reported)")
    parser.add_argument("--latency-n", type=int, default=200, help="idle latency samples")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per system")
    parser.add_argument("--graphs", nargs="+", default=list(DEFAULT_GRAPHS), choices=list(GRAPHS))
    parser.add_argument("--quick", action="store_true", help="runs=100 reps=1 latency-n=30")
    parser.add_argument("--scaling", action="store_true", help="ezgraph-fast with 1, 2, 4 workers")
    parser.add_argument(
        "--systems",
        nargs="+",
        default=list(SYSTEMS),
        choices=SYSTEMS,
        help="systems to measure (default: all; ratios need plain-rq)",
    )
    parser.add_argument("--no-celery", action="store_true", help="leave Celery out")
    parser.add_argument(
        "--dashboard", action="store_true", help="only time the dashboard's pages (see below)"
    )
    parser.add_argument("--dashboard-runs", type=int, default=100_000, help="runs put in SQL")
    parser.add_argument("--dashboard-reps", type=int, default=20, help="requests per page")
    parser.add_argument("--dashboard-db", help="database URL (default: a fresh SQLite file)")
    parser.add_argument(
        "--soak", type=float, metavar="SECONDS", help="only the soak (see benchmarks/soak.py)"
    )
    parser.add_argument("--soak-rate", type=float, help="runs/s (default: 70%% of the maximum)")
    parser.add_argument("--scale", action="store_true", help="only cost against size (scale.py)")
    parser.add_argument(
        "--widths", type=int, nargs="+", default=[1_000, 10_000, 100_000], help="map widths"
    )
    parser.add_argument(
        "--submit", action="store_true", help="only time submission from one process (see below)"
    )
    parser.add_argument("--submit-runs", type=int, default=5_000, help="runs per way of submit")
    args = parser.parse_args(argv)
    if args.submit:
        redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
        print("\n".join(submission.measure(redis_url, args.submit_runs, args.reps)))
        return 0
    if args.scale:
        scale.scale(args.widths, args.workers)
        return 0
    if args.soak:
        soak.soak(args.soak, args.soak_rate, args.workers)
        return 0
    if args.dashboard:
        redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
        lines = dashboard.measure(
            redis_url, args.dashboard_runs, args.dashboard_reps, args.dashboard_db
        )
        print("\n".join(lines))
        return 0
    if args.quick:
        args.runs, args.reps, args.latency_n = 100, 1, 30

    every: list[System] = [
        PlainRQ(),
        Ezgraph("stock"),
        Ezgraph("fast"),
        Ezgraph("fast", postgres=True),
        CeleryChain(),
    ]
    leave_out = {"celery"} if args.no_celery else set()
    candidates = [s for s in every if s.name in args.systems and s.name not in leave_out]
    if not candidates:
        parser.error("no system left to measure")
    started = time.monotonic()
    print(f"rq {rq.VERSION}, Python {platform.python_version()}")  # the figures are this RQ's
    measurements, latencies = measure_available(
        candidates, args, quiet_wait=1.0 if args.quick else 10.0
    )
    print()
    print(ratio_table(measurements))
    if postgres := postgres_table(measurements):
        print(f"\nezgraph worker, runs written to PostgreSQL against SQLite\n{postgres}")
    if latencies:
        print(f"\nidle latency, chain2, n={args.latency_n}")
        print(format_latency(latencies))
    if args.scaling:
        rows = []
        for workers in (1, 2, 4):
            scaled, _ = run_systems(
                [Ezgraph("fast")],
                ["chain2"],
                args.runs,
                args.reps,
                0,
                workers,
                log=False,
                quiet_wait=1.0,
            )
            med = median_of(scaled)
            rows.append([str(workers), f"{med.steps_per_s:.0f}", f"{med.runs_per_s:.0f}"])
        print("\nscaling, ezgraph-fast, chain2")
        print(format_rows(["workers", "steps/s", "runs/s"], rows))
    print(f"\ntotal {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
