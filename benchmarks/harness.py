"""Generic benchmark pieces shared by every system under test.

Graph shapes
    Graphs are plain data: ``{node: [successor, ...]}``. :data:`GRAPHS` maps the names the
    runners accept (``"chain2"``, ``"chain5"``, ``"fanin"``) to those dicts. Every node runs
    exactly once per run, so :func:`steps_per_run` is the number of nodes.

Instrumentation (identical for every system, so it cancels out when comparing)
    * The source step of a run calls :func:`mark_start` when it begins: ``ZADD bench:t0 LT``
      keeps the *earliest* start time. Only each worker process's first call writes (its first
      start is its earliest), so the window's start is the same as if every run wrote one.
    * The sink step of a run calls :func:`mark_end` when it finishes: ``ZADD bench:t1 GT`` keeps
      the *latest* end time, and ``RPUSH bench:done <run>`` counts completions (and lets a
      latency probe block on ``BLPOP``). Two commands, sent together.
    * Marks go out on a connection of their own without waiting for the replies (read later
      in bulk): a mark costs the step one ``send``, not a round trip. As round trips, the marks
      cost about as much as ezgraph's fast worker's own traffic per run and cut its measured
      throughput by a third.
    * The measured time is ``max(end) - min(start)`` with both stamps taken by the worker
      processes themselves (``time.time()`` on the same host), so worker start-up, the harness's
      polling interval and process shutdown are all outside the window.

Redis command accounting
    :func:`redis_commands` sums ``calls`` over ``INFO commandstats``. :class:`CommandMeter` takes
    the delta from just before the runs are submitted to shortly after the last one finished,
    then subtracts what the harness itself issued (its INFO calls, its polling, its barrier) and
    the :data:`INSTRUMENT_COMMANDS_PER_RUN` commands of the instrumentation above (the start
    marks, one per worker process, are left in: a few commands per measurement). What remains
    is the system's own traffic: submitting the runs, moving every step, storing results, plus
    the workers' fixed start-up/registration cost. MULTI and EXEC count as commands, and
    commands run inside MULTI/EXEC or Lua scripts are counted individually by Redis.

    The counters are server-wide: any other client of this Redis (another db, a test suite)
    inflates them and competes for the CPU. :class:`CommandMeter` detects and warns about
    foreign traffic (and a ``CONFIG RESETSTAT``, which yields NaN); the runner waits for Redis
    to go quiet before each measurement (:func:`wait_quiet`), and the table reports the
    *minimum* commands/step over the repetitions, since foreign traffic can only add to it.

CPU accounting
    :class:`CpuMeter` reads the worker processes' CPU time (every thread and child process,
    from /proc) and Redis's (``INFO cpu``) from the go signal to the end of the window. Per step,
    it is what the system costs on this machine, and it moves less with the machine's drift
    than steps/s does. Celery's workers start inside the window (no barrier), so it has none.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Protocol

from redis import Redis

# --------------------------------------------------------------------------- graph shapes

Graph = Mapping[str, Sequence[str]]

CHAIN2: dict[str, list[str]] = {"a": ["b"], "b": []}
CHAIN5: dict[str, list[str]] = {"a": ["b"], "b": ["c"], "c": ["d"], "d": ["e"], "e": []}
FANIN: dict[str, list[str]] = {
    "s": [f"p{i}" for i in range(8)],
    **{f"p{i}": ["j"] for i in range(8)},
    "j": [],
}

# A graph as large as a big deployment's (only --scale runs it): n0 -> n1 -> ... -> n99.
CHAIN100: dict[str, list[str]] = {f"n{i}": [f"n{i + 1}"] if i < 99 else [] for i in range(100)}
GRAPHS: dict[str, dict[str, list[str]]] = {
    "chain2": CHAIN2,
    "chain5": CHAIN5,
    "fanin": FANIN,
    "chain100": CHAIN100,
}
DEFAULT_GRAPHS = ("chain2", "chain5", "fanin")  # what a plain ``python -m benchmarks`` runs


def steps_per_run(graph: Graph) -> int:
    """Number of steps one run executes (every node runs exactly once)."""
    return len(graph)


def predecessors(graph: Graph) -> dict[str, list[str]]:
    """``{node: [predecessor, ...]}`` for every node of ``graph``."""
    preds: dict[str, list[str]] = {node: [] for node in graph}
    for node, succs in graph.items():
        for succ in succs:
            preds[succ].append(node)
    return preds


def sources(graph: Graph) -> list[str]:
    """Nodes without predecessors, in declaration order."""
    return [node for node, preds in predecessors(graph).items() if not preds]


def sinks(graph: Graph) -> list[str]:
    """Nodes without successors, in declaration order."""
    return [node for node, succs in graph.items() if not succs]


def topological_layers(graph: Graph) -> list[list[str]]:
    """Kahn layers: every node's predecessors are in earlier layers."""
    remaining = {node: len(preds) for node, preds in predecessors(graph).items()}
    layer = [node for node, count in remaining.items() if count == 0]
    layers: list[list[str]] = []
    while layer:
        layers.append(layer)
        nxt: list[str] = []
        for node in layer:
            for succ in graph[node]:
                remaining[succ] -= 1
                if remaining[succ] == 0:
                    nxt.append(succ)
        layer = nxt
    if sum(len(lay) for lay in layers) != len(graph):
        raise ValueError("graph has a cycle")
    return layers


# --------------------------------------------------------------------------- Redis helpers

REDIS_URL_ENV = "BENCH_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"

START_KEY = "bench:t0"
END_KEY = "bench:t1"
DONE_KEY = "bench:done"
READY_KEY = "bench:ready"
GO_KEY = "bench:go"
INSTRUMENT_COMMANDS_PER_RUN = 2  # ZADD, RPUSH (end); the start is one ZADD per process


def redis_url() -> str:
    """The benchmark Redis URL (``$BENCH_REDIS_URL``, default db 13 on localhost)."""
    return os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL)


def connect(url: str | None = None) -> Redis:
    """A client for the benchmark db; refuses db 0, which belongs to somebody else."""
    conn = Redis.from_url(url or redis_url())
    if int(conn.connection_pool.connection_kwargs.get("db", 0)) == 0:
        raise ValueError("benchmarks must not use Redis db 0; set BENCH_REDIS_URL to another db")
    return conn


def flush_bench_db(conn: Redis) -> None:
    """FLUSHDB the benchmark db (never db 0), its keys freed in the background (a
    1,000,000-item map's 2,000,000 keys took longer than a client's timeout), and wait until
    they are."""
    if int(conn.connection_pool.connection_kwargs.get("db", 0)) == 0:
        raise ValueError("refusing to FLUSHDB Redis db 0")
    conn.flushdb(asynchronous=True)
    # Then wait for Redis's lazy-free thread, which competes for the cores meanwhile (a
    # managed Redis may not report it: then no wait).
    deadline = time.monotonic() + 300
    while int(conn.info("memory").get("lazyfree_pending_objects", 0)) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)


def redis_command_counts(conn: Redis) -> dict[str, int]:
    """``{command: calls}`` from INFO commandstats (server-wide, cumulative)."""
    stats = conn.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(entry["calls"])
        for name, entry in stats.items()
        if isinstance(entry, dict)
    }


def redis_commands(conn: Redis) -> int:
    """Total commands the server has executed: sum of ``calls`` in INFO commandstats."""
    return sum(redis_command_counts(conn).values())


def command_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """Per-command difference of two :func:`redis_command_counts`, largest first."""
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()}
    return dict(sorted(((k, v) for k, v in delta.items() if v), key=lambda kv: -kv[1]))


def foreign_active_clients(conn: Redis, within_s: float) -> list[str]:
    """Clients on another db that issued a command in the last ``within_s`` seconds.

    INFO commandstats is server-wide, so such clients inflate a measurement's command count
    (and compete for CPU). Redis only reports whole seconds of idleness, so this is coarse.
    """
    own_db = int(conn.connection_pool.connection_kwargs.get("db", 0))
    active = []
    for client in conn.client_list():
        if int(client.get("db", own_db)) != own_db and int(client.get("idle", 0)) <= within_s:
            active.append(f"{client.get('addr')} db={client.get('db')} cmd={client.get('cmd')}")
    return active


def check_quiet(conn: Redis, seconds: float = 0.5) -> int:
    """Commands other clients issue while we sit idle; warns if anything else uses Redis."""
    before = redis_commands(conn)
    time.sleep(seconds)
    foreign = redis_commands(conn) - before - 1  # minus our own first INFO
    if foreign > 2:
        warnings.warn(
            f"{foreign} foreign Redis commands in {seconds}s: commands/step will be inflated",
            stacklevel=2,
        )
    return foreign


def wait_quiet(conn: Redis, max_wait: float = 10.0, quiet_for: float = 2.0) -> bool:
    """Wait (up to ``max_wait`` s) until no other-db client was active for ``quiet_for`` s.

    Returns whether Redis went quiet; the measurement proceeds either way.
    """
    deadline = time.monotonic() + max_wait
    while foreign_active_clients(conn, quiet_for):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def load_average() -> str:
    """The 1/5/15-minute load averages from /proc/loadavg, for the report header."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


class CommandMeter:
    """Counts the system's Redis commands between construction and :meth:`stop`.

    INFO commandstats is server-wide, so :meth:`stop` also looks for signs of other traffic and
    warns (and records them in :attr:`problems`): clients on other dbs that were active, and
    connections opened during the window that are not accounted for by live connections on the
    benchmark db (short-lived clients, e.g. a test suite). A ``CONFIG RESETSTAT`` during the
    window (any counter going down) makes the count meaningless: :meth:`stop` returns NaN.
    """

    def __init__(self, conn: Redis) -> None:
        self.conn = conn
        self.own = 2  # the two INFO calls below are counted by the server and are in the delta
        self.problems: list[str] = []
        self.started_at = time.monotonic()
        self.start = redis_command_counts(conn)
        self.connections = int(conn.info("stats")["total_connections_received"])

    def count_own(self, n: int = 1) -> None:
        """Record ``n`` commands the harness issued itself (they are subtracted)."""
        self.own += n

    def stop(self, runs: int) -> float:
        """System commands since construction, harness and instrumentation excluded."""
        after = redis_command_counts(self.conn)
        connections = int(self.conn.info("stats")["total_connections_received"])
        window = time.monotonic() - self.started_at + 1.0
        if any(after.get(name, 0) < calls for name, calls in self.start.items()):
            self.problems.append("command counters were reset (CONFIG RESETSTAT)")
        self.problems.extend(foreign_active_clients(self.conn, window))
        own_db = int(self.conn.connection_pool.connection_kwargs.get("db", 0))
        own_new = sum(
            1
            for client in self.conn.client_list()
            if int(client.get("db", -1)) == own_db and int(client.get("age", 0)) <= window
        )
        unexplained = connections - self.connections - own_new
        if unexplained > 0:
            self.problems.append(f"{unexplained} short-lived connection(s)")
        if self.problems:
            shown = "; ".join(self.problems[:4]) + ("; ..." if len(self.problems) > 4 else "")
            warnings.warn(
                f"other Redis traffic during the measurement ({shown}): "
                "commands/step and timings may be off",
                stacklevel=2,
            )
        if self.problems and self.problems[0].startswith("command counters were reset"):
            return math.nan
        delta = sum(after.values()) - sum(self.start.values())
        return delta - self.own - INSTRUMENT_COMMANDS_PER_RUN * runs


class _Marks:
    """The instrumentation's writes on a connection of their own, sent without waiting for
    Redis's replies: a mark costs the step one ``send``, not a round trip (a round trip per
    mark was as much as a fast worker's own traffic per step). Replies are read and dropped
    every :data:`DRAIN_EVERY` marks, so they never pile up."""

    DRAIN_EVERY = 64

    def __init__(self, conn: Redis) -> None:
        self.connection = conn.connection_pool.make_connection()
        self.connection.connect()
        self.unread = 0
        self.started = False  # this process recorded its first start

    def send(self, *commands: tuple[object, ...]) -> None:
        self.connection.send_packed_command(self.connection.pack_commands(commands))
        self.unread += len(commands)
        if self.unread >= self.DRAIN_EVERY:
            while self.unread:
                self.connection.read_response()
                self.unread -= 1


_marks: dict[int, _Marks] = {}


def _marks_for(conn: Redis) -> _Marks:
    marks = _marks.get(os.getpid())  # per process: a forked child needs its own socket
    if marks is None:
        marks = _marks[os.getpid()] = _Marks(conn)
    return marks


def mark_start(conn: Redis) -> None:
    """Called by a run's source step as it begins: keeps the earliest start time.

    Only a process's first call writes: its first start is its earliest, so the minimum over
    processes is the minimum over all runs.
    """
    marks = _marks_for(conn)
    if not marks.started:
        marks.started = True
        marks.send(("ZADD", START_KEY, "LT", repr(time.time()), "t"))


def mark_end(conn: Redis, run: int) -> None:
    """Called by a run's sink step as it finishes: latest end time + completion count."""
    _marks_for(conn).send(("ZADD", END_KEY, "GT", repr(time.time()), "t"), ("RPUSH", DONE_KEY, run))


def read_window(conn: Redis) -> float:
    """Seconds between the earliest recorded start and the latest recorded end."""
    t0 = conn.zscore(START_KEY, "t")
    t1 = conn.zscore(END_KEY, "t")
    if t0 is None or t1 is None:
        raise RuntimeError("no start/end stamps recorded: did the steps run?")
    return float(t1) - float(t0)


# --------------------------------------------------------------------------- processes


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (``VmRSS`` from /proc); 0.0 if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (scans /proc/*/stat for parent ids)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def max_rss_mb(procs: Iterable[subprocess.Popen[bytes]]) -> float:
    """Largest RSS of any process in the trees rooted at ``procs``."""
    return max((rss_mb(pid) for proc in procs for pid in process_tree(proc.pid)), default=0.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used, all its threads (0.0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def workers_cpu_seconds(procs: Iterable[subprocess.Popen[bytes]]) -> float:
    """CPU seconds used by every process in the trees rooted at ``procs``."""
    return sum(cpu_seconds(pid) for proc in procs for pid in process_tree(proc.pid))


def redis_cpu_seconds(conn: Redis) -> float:
    """CPU seconds the Redis server has used (``INFO cpu``, user + system)."""
    info = conn.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class CpuMeter:
    """CPU the worker processes (all their threads and child processes) and the Redis server
    use between construction and :meth:`stop`: what the steps cost, whatever the machine's
    speed did to the wall clock meanwhile. Redis's figure is server-wide (the harness's own
    polling is in it: one LLEN every 20 ms). Its own ``INFO cpu`` calls are reported to
    ``commands``, so they are not charged to the system."""

    def __init__(
        self,
        conn: Redis,
        procs: Sequence[subprocess.Popen[bytes]],
        commands: CommandMeter | None = None,
    ) -> None:
        self.conn = conn
        self.procs = list(procs)
        self.commands = commands
        self.workers = workers_cpu_seconds(self.procs)
        self.redis = self._redis_cpu()

    def _redis_cpu(self) -> float:
        if self.commands is not None:
            self.commands.count_own()
        return redis_cpu_seconds(self.conn)

    def stop(self) -> tuple[float, float]:
        """``(worker CPU s, Redis CPU s)`` since construction; read before the workers exit."""
        return (
            workers_cpu_seconds(self.procs) - self.workers,
            self._redis_cpu() - self.redis,
        )


def log_dir() -> Path:
    """Where worker stdout/stderr goes (kept for post-mortems, overwritten every run)."""
    path = Path(os.environ.get("BENCH_LOG_DIR", "/tmp/ezgraph-bench-logs"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def spawn(args: Sequence[str], log_name: str) -> subprocess.Popen[bytes]:
    """Start a worker in its own session (so :func:`stop_process` can reach its children)."""
    env = dict(os.environ)
    env[REDIS_URL_ENV] = redis_url()
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    with open(log_dir() / log_name, "wb") as log:
        return subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            env=env,
            start_new_session=True,
        )


def python_args(*args: str) -> list[str]:
    """``[sys.executable, *args]``: run with the benchmark's own interpreter."""
    return [sys.executable, *args]


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the worker (warm shutdown), then SIGKILL whatever is left of its process group."""
    if proc.poll() is None:
        _terminate(proc)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    # children (e.g. a prefork pool) may outlive their parent briefly
    _signal_group(proc, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()  # the leader only: a prefork parent shuts its own pool down


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # the group id is the pid: spawn() used start_new_session


def stop_all(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """:func:`stop_process` every process, terminating them all first."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            _terminate(proc)
    for proc in procs:
        stop_process(proc, timeout)


def check_alive(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """Raise if any worker exited (its log is in :func:`log_dir`)."""
    for proc in procs:
        code = proc.poll()
        if code is not None:
            raise RuntimeError(f"worker {proc.args!r} exited with {code}; see {log_dir()}")


def wait_ready(
    conn: Redis, expected: int, procs: Sequence[subprocess.Popen[bytes]], timeout: float = 60.0
) -> None:
    """Block until ``expected`` workers have INCRed :data:`READY_KEY` (not metered)."""
    wait_alive(lambda: int(conn.get(READY_KEY) or 0) >= expected, procs, timeout, "workers ready")


def wait_alive(
    condition: Callable[[], bool],
    procs: Sequence[subprocess.Popen[bytes]],
    timeout: float,
    what: str,
) -> None:
    """Poll ``condition`` every 20 ms while ``procs`` live; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        check_alive(procs)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout}s; see {log_dir()}")
        time.sleep(0.02)


def wait_done(
    conn: Redis,
    runs: int,
    procs: Sequence[subprocess.Popen[bytes]],
    meter: CommandMeter | None = None,
    timeout: float = 600.0,
    interval: float = 0.02,
) -> float:
    """Poll ``LLEN`` :data:`DONE_KEY` until ``runs`` runs finished; returns the max worker RSS.

    Each poll is one command, reported to ``meter`` so it is not charged to the system.
    """
    deadline = time.monotonic() + timeout
    peak = max_rss_mb(procs)
    while True:
        done = int(conn.llen(DONE_KEY))
        if meter is not None:
            meter.count_own()
        if done >= runs:
            return max(peak, max_rss_mb(procs))
        check_alive(procs)
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done}/{runs} runs finished after {timeout}s")
        peak = max(peak, max_rss_mb(procs))
        time.sleep(interval)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Measurement:
    """One throughput measurement of ``runs`` runs of ``graph`` on ``system``."""

    system: str
    graph: str
    runs: int
    steps: int
    seconds: float
    steps_per_s: float
    runs_per_s: float
    commands_per_step: float
    worker_rss_mb: float
    notes: tuple[str, ...] = ()  # signs of foreign Redis traffic (CommandMeter.problems)
    worker_cpu_us: float = math.nan  # worker CPU per step (CpuMeter); NaN when not measured
    redis_cpu_us: float = math.nan  # Redis CPU per step


def make_measurement(
    system: str,
    graph: str,
    runs: int,
    seconds: float,
    commands: float,
    worker_rss_mb: float,
    notes: Sequence[str] = (),
    cpu: tuple[float, float] | None = None,
) -> Measurement:
    """Fill in the derived fields of a :class:`Measurement` (``cpu``: :meth:`CpuMeter.stop`)."""
    steps = runs * steps_per_run(GRAPHS[graph])
    worker_cpu, redis_cpu = cpu if cpu is not None else (math.nan, math.nan)
    return Measurement(
        system=system,
        graph=graph,
        runs=runs,
        steps=steps,
        seconds=seconds,
        steps_per_s=steps / seconds,
        runs_per_s=runs / seconds,
        commands_per_step=commands / steps,
        worker_rss_mb=worker_rss_mb,
        notes=tuple(notes),
        worker_cpu_us=worker_cpu / steps * 1e6,
        redis_cpu_us=redis_cpu / steps * 1e6,
    )


def median_of(reps: Sequence[Measurement]) -> Measurement:
    """Field-wise median of repetitions of the same (system, graph) measurement.

    Each numeric field is the median of that field on its own (NaNs ignored), so the result need
    not be one of the repetitions (``steps_per_s`` and ``seconds`` stay consistent for equal
    ``runs``).
    """
    if not reps:
        raise ValueError("no repetitions")
    keys = {(m.system, m.graph) for m in reps}
    if len(keys) != 1:
        raise ValueError(f"median_of mixes measurements: {sorted(keys)}")
    values: dict[str, float] = {}
    for f in fields(Measurement):
        if f.name in ("system", "graph", "notes"):
            continue
        known = [getattr(m, f.name) for m in reps if not math.isnan(getattr(m, f.name))]
        values[f.name] = statistics.median(known) if known else math.nan
    first = reps[0]
    return replace(
        first,
        runs=int(values["runs"]),
        steps=int(values["steps"]),
        seconds=values["seconds"],
        steps_per_s=values["steps_per_s"],
        runs_per_s=values["runs_per_s"],
        commands_per_step=values["commands_per_step"],
        worker_rss_mb=values["worker_rss_mb"],
        notes=tuple(dict.fromkeys(note for m in reps for note in m.notes)),
        worker_cpu_us=values["worker_cpu_us"],
        redis_cpu_us=values["redis_cpu_us"],
    )


def group_reps(measurements: Iterable[Measurement]) -> dict[tuple[str, str], list[Measurement]]:
    """Repetitions keyed by ``(system, graph)``, in first-seen order."""
    groups: dict[tuple[str, str], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.system, m.graph), []).append(m)
    return groups


def format_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain aligned text table: first column left-aligned, the rest right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def min_commands_per_step(reps: Sequence[Measurement]) -> float:
    """Smallest valid commands/step of the repetitions.

    A system's own command count per step barely varies between repetitions, while traffic from
    other clients can only add to the server-wide count, so the minimum is the robust estimate.
    """
    known = [m.commands_per_step for m in reps if not math.isnan(m.commands_per_step)]
    return min(known) if known else math.nan


def format_table(measurements: Iterable[Measurement]) -> str:
    """Per (system, graph): medians, the steps/s range and the minimum commands/step.

    Only repetitions without :attr:`Measurement.notes` (no foreign Redis traffic seen) are used
    when there is at least one; the ``clean`` column says how many of the repetitions that was.
    """
    header = [
        "system/graph",
        "clean",
        "runs",
        "steps",
        "seconds",
        "steps/s",
        "(min-max)",
        "runs/s",
        "min cmds/step",
        "worker CPU us/step",
        "Redis CPU us/step",
        "rss MiB",
    ]
    rows = []
    for (system, graph), all_reps in group_reps(measurements).items():
        clean = [m for m in all_reps if not m.notes]
        reps = clean or all_reps
        med = median_of(reps)
        lo = min(m.steps_per_s for m in reps)
        hi = max(m.steps_per_s for m in reps)
        rows.append(
            [
                f"{system}/{graph}",
                f"{len(clean)}/{len(all_reps)}",
                str(med.runs),
                str(med.steps),
                f"{med.seconds:.2f}",
                f"{med.steps_per_s:.0f}",
                f"({lo:.0f}-{hi:.0f})",
                f"{med.runs_per_s:.1f}",
                f"{min_commands_per_step(reps):.1f}",
                _us(med.worker_cpu_us),
                _us(med.redis_cpu_us),
                f"{med.worker_rss_mb:.1f}",
            ]
        )
    return format_rows(header, rows)


def _us(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def format_latency(rows: Iterable[tuple[str, float, float]]) -> str:
    """Table of ``(label, p50_ms, p99_ms)`` rows."""
    body = [[label, f"{p50:.2f}", f"{p99:.2f}"] for label, p50, p99 in rows]
    return format_rows(["system (chain2, idle)", "p50 ms", "p99 ms"], body)


def percentile(samples: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (``pct`` in 0..100) of non-empty ``samples``."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    pos = (len(ordered) - 1) * pct / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency(submit_and_wait: Callable[[], None], n: int, warmup: int = 5) -> tuple[float, float]:
    """Time ``n`` sequential calls (after ``warmup`` untimed ones): ``(p50_ms, p99_ms)``.

    ``submit_and_wait`` submits one run to idle workers and returns once it has finished. With
    small ``n`` the p99 is essentially the maximum.
    """
    for _ in range(warmup):
        submit_and_wait()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        submit_and_wait()
        samples.append((time.perf_counter() - t) * 1000.0)
    return percentile(samples, 50), percentile(samples, 99)


class System(Protocol):
    """What a benchmarked system provides (baselines and ezgraph runners alike)."""

    name: str

    def available(self) -> bool: ...

    def setup(self) -> None: ...

    def run(self, graph: str, runs: int, workers: int = 2) -> Measurement: ...

    def latency(self, n: int) -> list[tuple[str, float, float]]:
        """Idle latency rows: ``(label, p50 ms, p99 ms)``."""
        ...

    def teardown(self) -> None: ...


class WorkerSystem:
    """What the benchmarked systems share: a connection to the benchmark's Redis db and the worker
    processes they started, stopped and forgotten on teardown."""

    name = ""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or redis_url()
        self._procs: list[subprocess.Popen[bytes]] = []

    def available(self) -> bool:
        return True

    def setup(self) -> None:
        self.conn = connect(self.url)
        flush_bench_db(self.conn)

    def teardown(self) -> None:
        stop_all(self._procs)
        self._procs = []
        flush_bench_db(self.conn)

    def _stop_workers(self, procs: list[subprocess.Popen[bytes]]) -> None:
        stop_all(procs)
        self._procs = [p for p in self._procs if p not in procs]
