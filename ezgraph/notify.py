"""Notifications: each ended run, once in SQL, is POSTed as JSON to ``FLOW_ORCHESTRATION_URL``.

The hand-over writes a run and its pending notification in one transaction
(:mod:`ezgraph.state.notifications`); a :class:`Notifier` thread, in every process that
writes runs (``ezgraph worker``, ``ezgraph persist``, a stock SimpleWorker), sends the due
ones, off the steps' path: a receiver that is slow or down delays its notifications, never a
step or a run. A POST that fails is sent again by urllib3's ``Retry`` (at once, then after 1
and 2 s; a ``Retry-After`` is not followed: it could hold the notifier past its lease); when
that fails too, the run waits in SQL for a later attempt, 5 s then twice as long each time up
to 10 minutes, and the notifier pauses as long (the receiver is down: the others would fail
too). Delivery is at least once: a process
that dies after the receiver took a POST, before marking it delivered, leaves it to be sent again
once its lease ends; the ``Idempotency-Key`` header (``<run_id>:<ended_at>``) tells the receiver
it has seen it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import urllib3
from urllib3.util.retry import RequestHistory, Retry

from . import __version__
from .context import Context
from .errors import ConnectionFailed
from .settings import Tuning, redact_text, redact_url

logger = logging.getLogger(__name__)

# Answers that sending again may change; any other non-2xx answer fails the notification.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
HEADERS = {"Content-Type": "application/json", "User-Agent": f"ezgraph/{__version__}"}


class Notifier(threading.Thread):
    """Sends the notifications due to ``url`` from one process, in a thread of its own."""

    def __init__(self, context: Context, url: str) -> None:
        super().__init__(name="ezgraph-notifier", daemon=True)
        self.context = context
        self.url = url
        self.tuning = context.tuning
        self.notifications = context.notifications
        self.http = urllib3.PoolManager(
            timeout=urllib3.Timeout(self.tuning.notify_timeout),
            retries=retry_policy(self.tuning),
        )
        self.stopped = threading.Event()
        self._wake = threading.Event()
        self._paused_until = 0.0  # monotonic: the receiver failed, wait until then

    def wake(self) -> None:
        """Runs were written: look for their notifications now."""
        self._wake.set()

    def run(self) -> None:
        """Send due notifications as runs are written, and each ``notify_every`` seconds."""
        while not self.stopped.is_set():
            self._wake.wait(self.tuning.notify_every)
            self._wake.clear()
            if self.stopped.is_set() or time.monotonic() < self._paused_until:
                continue
            try:
                while self.send_due() >= self.tuning.notify_batch and not self.stopped.is_set():
                    pass
            except ConnectionFailed as error:
                logger.warning("notifications wait for the database: %s", error)
            except Exception:
                logger.exception("sending notifications failed; they wait in SQL")

    def send_due(self) -> int:
        """Send the notifications due now, up to a batch; returns how many were looked at.
        The first that fails for a reason that may pass (the receiver is down) ends the look."""
        due = self.notifications.due(datetime.now(UTC), self.tuning.notify_batch)
        for run_id, seen, attempts in due:
            lease = datetime.now(UTC) + timedelta(seconds=self.tuning.notify_lease)
            if not self.notifications.take(run_id, seen, lease):
                continue  # another notifier took it
            if not self._send(run_id, lease, attempts + 1):
                return 0
        return len(due)

    def _send(self, run_id: str, lease: datetime, attempt: int) -> bool:
        """POST one run; False when it should wait for a later attempt."""
        record = self.context.store.load_run(run_id)
        if record is None:
            self.notifications.settle(run_id, lease, "the run is not in SQL", None)
            return True
        key = f"{run_id}:{record.ended_at.isoformat() if record.ended_at else ''}"
        body = json.dumps({"event": "run.ended", **record.to_status()}, default=str)
        try:
            response = self.http.request(
                "POST", self.url, body=body.encode(), headers={**HEADERS, "Idempotency-Key": key}
            )
        except urllib3.exceptions.HTTPError as error:
            reason = redact_text(f"{type(error).__name__}: {error}", self.url)
            return self._later(run_id, lease, attempt, reason)
        if 200 <= response.status < 300:
            self.notifications.settle(run_id, lease, None, None)
            logger.info("run %s: notified %s", run_id, redact_url(self.url))
            return True
        answer = f"HTTP {response.status}: {response.data[:200].decode(errors='replace')}"
        if response.status in RETRY_STATUSES:
            return self._later(run_id, lease, attempt, answer)
        logger.error(
            "run %s: %s refused its notification: %s", run_id, redact_url(self.url), answer
        )
        self.notifications.settle(run_id, lease, answer, None)
        return True

    def _later(self, run_id: str, lease: datetime, attempt: int, error: str) -> bool:
        """The receiver failed: the run waits for its next attempt, and so does this notifier."""
        delay = backoff(self.tuning, attempt)
        retry_at = datetime.now(UTC) + timedelta(seconds=delay)
        self.notifications.settle(run_id, lease, error, retry_at)
        self._paused_until = time.monotonic() + delay
        logger.warning(
            "run %s: notifying %s failed (%s); trying again in %.1f s",
            run_id,
            redact_url(self.url),
            error,
            delay,
        )
        return False

    def stop(self) -> None:
        """End the thread, then send what is due once more (the runs this process wrote last),
        unless the receiver just failed; what is left waits in SQL for another process."""
        self.stopped.set()
        self._wake.set()
        if self.is_alive():
            self.join(timeout=self.tuning.notify_timeout)
        if self.is_alive() or time.monotonic() < self._paused_until:
            return
        try:
            self.send_due()
        except ConnectionFailed as error:
            logger.warning("notifications wait for the database: %s", error)


def retry_policy(tuning: Tuning) -> Retry:
    """How one attempt retries a POST: on connection errors and answers in
    :data:`RETRY_STATUSES`, with urllib3's exponential backoff (a ``Retry-After`` of hours
    would hold the notifier past its lease: the waits between attempts stand in for it)."""
    return Retry(
        total=tuning.notify_retries,
        redirect=0,
        allowed_methods=None,  # POST too: the receiver dedups by Idempotency-Key
        status_forcelist=RETRY_STATUSES,
        backoff_factor=tuning.notify_backoff,
        raise_on_redirect=False,
        raise_on_status=False,
        respect_retry_after_header=False,
    )


def backoff(tuning: Tuning, attempts: int) -> float:
    """Seconds a run waits after its ``attempts``-th failed attempt: urllib3's exponential
    backoff (``notify_later`` doubling up to ``notify_later_max``, a second of jitter)."""
    failed: Any = (RequestHistory("POST", None, None, None, None),) * (attempts + 1)
    policy = Retry(
        total=None,
        backoff_factor=tuning.notify_later / 2,
        backoff_max=tuning.notify_later_max,
        backoff_jitter=1.0,
        history=failed,
    )
    return policy.get_backoff_time()
