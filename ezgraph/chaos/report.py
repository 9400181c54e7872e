"""What a chaos audit saw: one tally per nemesis, and their sum."""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class Tally:
    """The runs one nemesis struck at (or, for the total, every run) and what became of them."""

    nemesis: str
    runs: int = 0
    faults: int = 0
    finished: int = 0
    failed: int = 0  # the chaos graph's steps never fail: every failed run failed without cause
    stuck: int = 0  # not ended when the audit ended
    lost: int = 0  # ended (or gone from Redis) but not in SQL
    sql_runs: int = 0
    duplicated_sql_rows: int = 0
    executions: int = 0
    steps: int = 0
    side_effects: int = 0
    duplicate_side_effects: int = 0
    missing_side_effects: int = 0
    recoveries: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float | None:
        """The q-th percentile of recovery times, in seconds (None without recoveries)."""
        if not self.recoveries:
            return None
        ordered = sorted(self.recoveries)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    def add(self, other: Tally) -> None:
        """Add ``other``'s counts and recoveries to this tally's."""
        for item in fields(self):
            if item.name != "nemesis":
                setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))

    @property
    def clean(self) -> bool:
        """Nothing lost, stuck, failed or duplicated."""
        return not (
            self.lost
            or self.stuck
            or self.failed
            or self.duplicated_sql_rows
            or self.duplicate_side_effects
            or self.missing_side_effects
        )

    def row(self) -> str:
        """This tally as a row of the report's table."""
        p50, p99 = self.percentile(50), self.percentile(99)
        recovery = "-" if p50 is None or p99 is None else f"{p50:6.2f} / {p99:6.2f} s"
        counts = (
            f"{self.faults:>6} {self.runs:>6} {self.lost:>5} {self.stuck:>6} {self.failed:>7}"
            f" {self.duplicated_sql_rows:>9} {self.duplicate_side_effects:>12}"
            f" {self.missing_side_effects:>8}"
        )
        return f"{self.nemesis:<14}{counts}  {recovery}"


HEADER = (
    f"{'nemesis':<14}{'faults':>6} {'runs':>6} {'lost':>5} {'stuck':>6} {'failed':>7}"
    f" {'dup. rows':>9} {'dup. effects':>12} {'missing':>8}  recovery p50 / p99"
)


@dataclass
class ChaosReport:
    """One tally per nemesis, in the order they struck."""

    tallies: list[Tally]
    worker_exits: int = 0  # workers that ended by themselves (not killed by the audit)
    seconds: float = 0.0

    @property
    def total(self) -> Tally:
        """Every nemesis's tally added up."""
        total = Tally("all")
        for tally in self.tallies:
            total.add(tally)
        return total

    @property
    def clean(self) -> bool:
        """Nothing lost, stuck, failed or duplicated under any nemesis."""
        return all(tally.clean for tally in self.tallies)

    def lines(self) -> list[str]:
        """The report: a table, one row per nemesis (and their total), then the totals."""
        total = self.total
        rows = [HEADER, *(tally.row() for tally in self.tallies)]
        if len(self.tallies) > 1:
            rows.append(total.row())
        p50, p99 = total.percentile(50), total.percentile(99)
        recovery = (
            f"{p50:.2f} s p50 / {p99:.2f} s p99 over {len(total.recoveries)} recoveries"
            if p50 is not None and p99 is not None
            else "no fault held a step"
        )
        faults = ", ".join(f"{t.faults} {t.nemesis}" for t in self.tallies)
        return [
            *rows,
            "",
            f"runs:                   {total.runs} ({total.finished} finished,"
            f" {total.failed} failed, {total.stuck} stuck)",
            f"faults:                 {total.faults} ({faults})",
            f"lost runs:              {total.lost}",
            f"runs in SQL:            {total.sql_runs}",
            f"duplicated SQL rows:    {total.duplicated_sql_rows}",
            f"step executions:        {total.executions} for {total.steps} steps",
            f"side effects:           {total.side_effects}",
            f"duplicate side effects: {total.duplicate_side_effects}",
            f"missing side effects:   {total.missing_side_effects}",
            f"workers that exited:    {self.worker_exits}",
            f"recovery:               {recovery}",
            f"took:                   {self.seconds:.1f} s",
        ]
