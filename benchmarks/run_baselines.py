"""Run the baseline systems on every graph and print medians and idle latency.

    python -m benchmarks.run_baselines            # 1000 runs per measurement, 3 repetitions
    python -m benchmarks.run_baselines --quick    # 100 runs, 1 repetition (well under a minute)

Repetitions are interleaved (rep 1 of every system and graph, then rep 2, ...) so slow drift of
the machine spreads over all systems instead of penalising one.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from .baselines import CeleryChain, PlainRQ
from .harness import (
    GRAPHS,
    Measurement,
    System,
    check_quiet,
    connect,
    format_latency,
    format_table,
    load_average,
    wait_quiet,
)


def run_systems(
    systems: Sequence[System],
    graphs: Sequence[str],
    runs: int,
    reps: int,
    latency_n: int,
    workers: int = 2,
    log: bool = True,
    quiet_wait: float = 10.0,
) -> tuple[list[Measurement], list[tuple[str, float, float]]]:
    """Set up every system, measure (interleaved), latency-probe, and always tear down.

    Before each measurement, waits up to ``quiet_wait`` s for other Redis clients to go idle.
    """
    conn = connect()
    measurements: list[Measurement] = []
    latencies: list[tuple[str, float, float]] = []
    started: list[System] = []
    try:
        for system in systems:
            system.setup()
            started.append(system)
        for rep in range(reps):
            for graph in graphs:
                for system in systems:
                    if quiet_wait > 0 and not wait_quiet(conn, quiet_wait):
                        print("Redis is not quiet; measuring anyway", file=sys.stderr)
                    m = system.run(graph, runs, workers)
                    measurements.append(m)
                    if log:
                        print(
                            f"rep {rep + 1}/{reps} {m.system}/{m.graph}: {m.steps_per_s:.0f} "
                            f"steps/s, {m.commands_per_step:.1f} cmds/step",
                            file=sys.stderr,
                            flush=True,
                        )
        if latency_n > 0:
            for system in systems:
                if quiet_wait > 0:
                    wait_quiet(conn, quiet_wait)
                latencies.extend(system.latency(latency_n))
    finally:
        for system in started:
            system.teardown()
    return measurements, latencies


def measure_available(
    candidates: Sequence[System], args: argparse.Namespace, quiet_wait: float
) -> tuple[list[Measurement], list[tuple[str, float, float]]]:
    """Measure the installed ``candidates`` (``args``: runs, reps, latency_n, workers, graphs)
    and print the table of medians; returns the measurements and idle latencies."""
    systems: list[System] = []
    for system in candidates:
        if system.available():
            systems.append(system)
        else:
            missing = getattr(system, "missing", "not installed (pip install -e '.[bench]')")
            print(f"skipping {system.name}: {missing}", file=sys.stderr)
    check_quiet(connect())
    load_before = load_average()
    measurements, latencies = run_systems(
        systems,
        args.graphs,
        args.runs,
        args.reps,
        args.latency_n,
        args.workers,
        quiet_wait=quiet_wait,
    )
    print(
        f"\nruns={args.runs} reps={args.reps} workers={args.workers} (medians); "
        f"load average before {load_before}, after {load_average()}"
    )
    print(format_table(measurements))
    return measurements, latencies


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run_baselines", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=1000, help="runs per measurement")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (median is reported)")
    parser.add_argument("--latency-n", type=int, default=200, help="idle latency samples")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per system")
    parser.add_argument("--graphs", nargs="+", default=list(GRAPHS), choices=list(GRAPHS))
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="max seconds to wait before each measurement for other Redis clients to go idle",
    )
    parser.add_argument(
        "--quick", action="store_true", help="runs=100 reps=1 latency-n=30 quiet-wait<=1"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.reps, args.latency_n = 100, 1, 30
        args.quiet_wait = min(args.quiet_wait, 1.0)

    t0 = time.monotonic()
    _, latencies = measure_available([PlainRQ(), CeleryChain()], args, args.quiet_wait)
    if latencies:
        print(f"\nidle latency, chain2, n={args.latency_n}")
        print(format_latency(latencies))
    print(f"\ntotal {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
