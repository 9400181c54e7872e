"""The dashboard in a real browser: headless Chromium (Selenium, Debian's chromium and
chromium-driver) walks the runs list, a live run's page, cancels it, and retries a failed run.
With EZGRAPH_SCREENSHOTS=docs it saves the screenshots the README shows (docs/*.png; otherwise
they go to the test's temporary folder, leaving the checkout as it was). Skipped when Chromium is
missing."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context

from ..conftest import ROOT, drain, ezgraph_process, subprocess_env, wait_for

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
SHOTS = os.environ.get("EZGRAPH_SCREENSHOTS")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="Chromium is not installed (apt-get install -y chromium chromium-driver)",
)


@pytest.fixture
def browser() -> Iterator[object]:
    """Headless Chromium, touching no network but this machine."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=str(DRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """``ezgraph dashboard`` on a free port; returns the process and its base URL."""
    port = free_port()
    process = ezgraph_process("dashboard", "--port", str(port), env=env)
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2):
                return True
        except OSError:
            return False

    wait_for(answers, 30, "the dashboard")
    return process, base


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: EZGRAPH_SCREENSHOTS (under the checkout) or a temporary folder."""
    folder = ROOT / SHOTS if SHOTS else tmp_path
    folder.mkdir(exist_ok=True)
    return folder


def shot(driver: object, folder: Path, name: str) -> None:
    """Save a screenshot (the README's, with EZGRAPH_SCREENSHOTS=docs)."""
    driver.save_screenshot(str(folder / name))  # type: ignore[attr-defined]


def test_a_browser_walks_the_list_a_live_run_cancel_and_retry(
    make_context: Callable[..., Context], redis_conn: Redis, browser: object, shots: Path
) -> None:
    driver: object = browser
    # Kept in Redis for the whole test: a run can be retried only while Redis holds it.
    failing = make_context("tests.graphs.failing", run_ttl=600)
    orchestrator = GraphOrchestrator(context=failing)
    failed = orchestrator.submit("a", {"detail": " (a failure the retry meets again)"})
    mapped = make_context("tests.graphs.mapped")
    map_run = GraphOrchestrator(context=mapped).submit("m", {"items": [1, 2, 3, 4, 5]})
    drain(failing)
    drain(mapped)
    slow = make_context("tests.graphs.slowchain")
    payload = {
        "sleep": 0.2,
        "ledger_url": subprocess_env(slow.settings)["REDIS_URL"],
        "ledger_key": "l",
    }
    env = subprocess_env(slow.settings)
    worker = ezgraph_process("worker", "a", env=env)  # a runs; b waits: the run stays live
    server, base = serve(env)
    try:
        wait_for(lambda: bool(redis_conn.smembers(slow.keys.workers)), 30, "the worker")
        live = GraphOrchestrator(context=slow).submit("a", payload)
        wait_for(lambda: redis_conn.llen("rq:queue:b") == 1, 30, "step a to finish")

        driver.get(f"{base}/runs")  # type: ignore[attr-defined]
        rows = driver.find_elements(By.CSS_SELECTOR, "table.runs tbody tr")  # type: ignore[attr-defined]
        assert [r.find_element(By.TAG_NAME, "a").text for r in rows] == [live, map_run, failed]
        assert "live" in rows[0].text
        shot(driver, shots, "dashboard-runs.png")

        rows[0].find_element(By.TAG_NAME, "a").click()
        assert driver.find_element(By.ID, "run-status").text == "running"  # type: ignore[attr-defined]
        svg = driver.find_element(By.CSS_SELECTOR, "section.graph svg")  # type: ignore[attr-defined]
        assert "b" in svg.text and "pending" in svg.text
        shot(driver, shots, "dashboard-run-live.png")
        driver.find_element(By.ID, "cancel").click()  # type: ignore[attr-defined]
        wait_for(
            lambda: driver.find_element(By.ID, "run-status").text == "canceled",  # type: ignore[attr-defined]
            15,
            "the page to show the run canceled",
        )
        assert "cancel: run is canceled" in driver.find_element(By.TAG_NAME, "main").text  # type: ignore[attr-defined]
        assert GraphOrchestrator(context=slow).status(live)["status"] == "canceled"
        assert redis_conn.llen("rq:queue:b") == 0

        driver.get(f"{base}/runs/{map_run}")  # type: ignore[attr-defined]
        bar = driver.find_element(By.TAG_NAME, "progress")  # type: ignore[attr-defined]
        assert (bar.get_attribute("value"), bar.get_attribute("max")) == ("5", "5")
        shot(driver, shots, "dashboard-run-map.png")

        driver.get(f"{base}/runs?status=failed")  # type: ignore[attr-defined]
        driver.find_element(By.LINK_TEXT, failed).click()  # type: ignore[attr-defined]
        assert "ValueError: boom in c" in driver.page_source  # type: ignore[attr-defined]
        shot(driver, shots, "dashboard-run-failed.png")
        driver.find_element(By.ID, "retry").click()  # type: ignore[attr-defined]
        assert "retry: run is running" in driver.find_element(By.TAG_NAME, "main").text  # type: ignore[attr-defined]
        status = json.loads(urllib.request.urlopen(f"{base}/runs/{failed}.json", timeout=5).read())
        assert status["nodes"]["c"] == "queued"  # requeued; no worker serves c here
    finally:
        for process in (worker, server):
            process.terminate()
            process.communicate(timeout=15)
    assert (shots / "dashboard-runs.png").stat().st_size > 10_000
