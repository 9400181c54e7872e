"""The benchmark's window marks, sent without waiting for replies, against a real Redis."""

from __future__ import annotations

import math
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from redis import Redis

from benchmarks import harness

from ..conftest import wait_for


def _mark_start_in_child(url: str) -> None:
    harness.mark_start(Redis.from_url(url))


def _wait_done(conn: Redis, count: int) -> None:
    wait_for(lambda: conn.llen(harness.DONE_KEY) >= count, 5, f"{count} end marks")
    assert conn.llen(harness.DONE_KEY) == count


@pytest.fixture
def own_marks() -> Iterator[None]:
    """This process's marks start afresh and are closed after the test."""
    harness._marks.pop(os.getpid(), None)
    yield
    marks = harness._marks.pop(os.getpid(), None)
    if marks is not None:
        marks.connection.disconnect()


@pytest.mark.usefixtures("own_marks")
def test_marks_keep_the_window_and_the_count(redis_conn: Redis, redis_url: str) -> None:
    """The earliest start of any process and the latest end are kept, a process writes only its
    first start, every end counts, and replies read in bulk keep the connection usable."""
    child = multiprocessing.get_context("spawn").Process(
        target=_mark_start_in_child, args=(redis_url,)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0
    earliest = redis_conn.zscore(harness.START_KEY, "t")
    assert earliest is not None

    harness.mark_start(redis_conn)  # later than the child's: ZADD LT keeps the child's
    harness.mark_end(redis_conn, 0)
    _wait_done(redis_conn, 1)  # one connection, in order: the start mark was applied before
    assert redis_conn.zscore(harness.START_KEY, "t") == earliest

    redis_conn.delete(harness.START_KEY)
    harness.mark_start(redis_conn)  # this process marked its start already: nothing is sent
    runs = 3 * harness._Marks.DRAIN_EVERY  # past several bulk reads of the replies
    before_ends = time.time()
    for run in range(1, runs):
        harness.mark_end(redis_conn, run)
    _wait_done(redis_conn, runs)
    assert redis_conn.exists(harness.START_KEY) == 0
    end = redis_conn.zscore(harness.END_KEY, "t")
    assert end is not None and before_ends <= end <= time.time()


def test_cpu_meter_counts_a_busy_worker_and_the_median_keeps_cpu(redis_conn: Redis) -> None:
    """A worker process burning CPU shows up in the meter (its threads included), Redis's own
    CPU is read from INFO, and per-step figures survive the median of repetitions."""
    code = (
        "import threading, time\n"
        "def spin():\n"
        "    end = time.process_time() + 0.3\n"
        "    while time.process_time() < end: pass\n"
        "thread = threading.Thread(target=spin); thread.start(); thread.join()\n"
        "time.sleep(30)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", code])
    try:
        meter = harness.CpuMeter(redis_conn, [worker])
        wait_for(lambda: harness.workers_cpu_seconds([worker]) - meter.workers >= 0.25, 10, "CPU")
        redis_conn.ping()
        worker_s, redis_s = meter.stop()
    finally:
        worker.kill()
        worker.wait()
    assert worker_s >= 0.25
    assert redis_s >= 0.0
    reps = [
        harness.make_measurement("x", "chain2", 100, 1.0, 4000.0, 40.0, (), (w, 0.01))
        for w in (0.2, 0.4, 0.3)
    ]
    median = harness.median_of(reps)
    assert median.worker_cpu_us == pytest.approx(0.3 / 200 * 1e6)
    assert median.redis_cpu_us == pytest.approx(0.01 / 200 * 1e6)
    assert math.isnan(harness.make_measurement("x", "chain2", 100, 1.0, 1.0, 1.0).worker_cpu_us)
    assert "1500" in harness.format_table(reps)


def test_ratio_table_pairs_each_repetition_with_plain_rqs_and_systems_can_be_chosen() -> None:
    """The range column divides each repetition by plain RQ's run of the same repetition (not
    by plain RQ's median), and ``--systems`` refuses a name it does not know, as usage."""
    from benchmarks.__main__ import main, ratio_table

    def rep(system: str, seconds: float) -> harness.Measurement:
        return harness.make_measurement(system, "chain2", 100, seconds, 4000.0, 40.0)

    # plain: 200, 100, 400 steps/s; stock: 180, 110, 300 -> paired 0.90, 1.10, 0.75 (against
    # plain's median they would be 0.90, 0.55, 1.50)
    order = [("plain-rq", 1.0), ("ezgraph-stock", 200 / 180), ("plain-rq", 2.0)]
    order += [("ezgraph-stock", 200 / 110), ("plain-rq", 0.5), ("ezgraph-stock", 200 / 300)]
    table = ratio_table([rep(system, seconds) for system, seconds in order])
    stock = next(line for line in table.splitlines() if line.startswith("ezgraph-stock/chain2"))
    assert stock.split()[1:4] == ["180", "0.90x", "0.75-1.10"]
    with pytest.raises(SystemExit) as refused:
        main(["--systems", "plain-rq", "no-such-system"])
    assert refused.value.code == 2
