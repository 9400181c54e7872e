"""Unit tests of the chaos audit's report: per-nemesis rows, their total, what counts as clean."""

from __future__ import annotations

from ezgraph.chaos import NEMESES, ChaosReport, Tally


def test_the_total_adds_every_nemesis_and_one_fault_anywhere_makes_the_report_unclean() -> None:
    kill = Tally("kill", runs=10, faults=2, finished=10, sql_runs=10, recoveries=[7.0, 8.0])
    stall = Tally("stall-redis", runs=10, faults=1, finished=9, sql_runs=9, stuck=1)
    stall.recoveries.append(0.5)
    report = ChaosReport([kill, stall], seconds=12.0)
    total = report.total
    assert (total.runs, total.faults, total.finished, total.stuck) == (20, 3, 19, 1)
    assert sorted(total.recoveries) == [0.5, 7.0, 8.0]
    assert kill.clean and not stall.clean and not report.clean
    lines = report.lines()
    assert lines[0].split()[:3] == ["nemesis", "faults", "runs"]
    assert lines[1].split()[:3] == ["kill", "2", "10"]
    assert lines[3].split()[:3] == ["all", "3", "20"]
    assert "runs:                   20 (19 finished, 0 failed, 1 stuck)" in lines
    assert "faults:                 3 (2 kill, 1 stall-redis)" in lines


def test_percentiles_of_recovery_and_a_nemesis_that_held_nothing() -> None:
    tally = Tally("pause", recoveries=[float(n) for n in range(1, 101)])
    assert (tally.percentile(50), tally.percentile(99)) == (51.0, 99.0)
    assert Tally("hang-db").percentile(99) is None
    assert Tally("hang-db").row().endswith("-")


def test_every_nemesis_has_a_hold_and_only_the_redis_ones_need_a_private_server() -> None:
    assert list(NEMESES) == ["kill", "pause", "stall-redis", "restart-redis", "hang-db"]
    private = {name for name, nemesis in NEMESES.items() if nemesis.needs_private_redis}
    assert private == {"stall-redis", "restart-redis"}
    assert NEMESES["pause"](None).hold == 15.0 and NEMESES["pause"](3.0).hold == 3.0
    assert NEMESES["hang-db"]().refusal("mysql://x/y") is not None
    assert NEMESES["hang-db"]().refusal("sqlite:///ezgraph.db") is None
