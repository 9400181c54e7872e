"""Settings: read once from the environment, then passed down explicitly.

Precedence is CLI flag > environment variable > default. Every variable is documented in the
README's "Configuration" section; :data:`ENV_VARS` is the list the docs test checks against.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from .errors import UsageError

DEFAULT_DATABASE_URL = "sqlite:///ezgraph.db"
MAX_SECONDS = 1_000_000_000  # ~31 years: the largest timeout, interval or TTL accepted

ENV_VARS = (
    "REDIS_URL",
    "RQ_REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_DB",
    "REDIS_PASSWORD",
    "DATABASE_URL",
    "EZGRAPH_MODULES",
    "EZGRAPH_HOME",
    "EZGRAPH_KEY_PREFIX",
    "EZGRAPH_MAX_PAYLOAD",
    "EZGRAPH_JOB_TIMEOUT",
    "EZGRAPH_RETRIES",
    "EZGRAPH_RETRY_INTERVALS",
    "EZGRAPH_RESULT_TTL",
    "EZGRAPH_RUN_TTL",
    "EZGRAPH_CLAIM_BATCH",
    "EZGRAPH_DASHBOARD_USERNAME",
    "EZGRAPH_DASHBOARD_PASSWORD",
    "FLOW_ORCHESTRATION_URL",
    "EZGRAPH_TRACING",
)

TRACING_MODES = ("off", "on", "console")


@dataclass(frozen=True)
class Settings:
    """Everything ezgraph needs to know about its environment.

    ``redis_url`` is ``None`` in embedded mode: ezgraph then starts (or reuses) a private
    Redis-compatible server under ``home``.
    """

    redis_url: str | None = None
    database_url: str = DEFAULT_DATABASE_URL
    # None: the `modules` package of the working directory, or else the example graph.
    modules_package: str | None = None
    home: Path = field(default_factory=lambda: Path(".ezgraph"))
    key_prefix: str = "ezgraph"
    max_payload_bytes: int = 1_000_000
    job_timeout: int = 180
    retries: int = 0
    retry_intervals: tuple[int, ...] = ()
    # How long RQ keeps a finished step's job while its run is live (once the run is in SQL,
    # run_ttl): it must outlive any run.
    result_ttl: int = 86_400
    # How long an ended run's keys, its RQ jobs' included, stay in Redis once it is in SQL.
    run_ttl: int = 10
    # Jobs an ezgraph worker claims per Redis call (1 = one at a time, like RQ).
    claim_batch: int = 8
    # HTTP basic auth of `ezgraph dashboard` and `ezgraph metrics` (both, or neither).
    dashboard_username: str | None = None
    dashboard_password: str | None = field(default=None, repr=False)
    # Where each ended run is POSTed once it is in SQL (None: runs are not sent anywhere).
    notify_url: str | None = None
    # OpenTelemetry spans of runs and steps: off, on (the process's tracer provider) or
    # console (ezgraph installs the SDK's, printing spans); needs ezgraph[tracing].
    tracing: str = "off"

    @property
    def embedded(self) -> bool:
        """True when no Redis was configured and the embedded server is used."""
        return self.redis_url is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``env`` (default ``os.environ``); non-None ``overrides`` win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            "redis_url": _redis_url_from_env(env),
            "database_url": env.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            "modules_package": env.get("EZGRAPH_MODULES") or None,
            "home": Path(env.get("EZGRAPH_HOME") or ".ezgraph"),
            "key_prefix": env.get("EZGRAPH_KEY_PREFIX") or "ezgraph",
            "max_payload_bytes": _int(env, "EZGRAPH_MAX_PAYLOAD", 1_000_000, 1, 2**31),
            "job_timeout": _int(env, "EZGRAPH_JOB_TIMEOUT", 180, 1, MAX_SECONDS),
            "retries": _int(env, "EZGRAPH_RETRIES", 0, 0, 1_000_000),
            "retry_intervals": _ints(env, "EZGRAPH_RETRY_INTERVALS"),
            # -1 keeps finished step jobs for ever, as RQ's result_ttl=-1 does.
            "result_ttl": _int(env, "EZGRAPH_RESULT_TTL", 86_400, -1, MAX_SECONDS, but=0),
            "run_ttl": _int(env, "EZGRAPH_RUN_TTL", 10, 1, MAX_SECONDS),
            "claim_batch": _int(env, "EZGRAPH_CLAIM_BATCH", 8, 1, 1_000),
            "dashboard_username": env.get("EZGRAPH_DASHBOARD_USERNAME") or None,
            "dashboard_password": env.get("EZGRAPH_DASHBOARD_PASSWORD") or None,
            "notify_url": _http_url(env, "FLOW_ORCHESTRATION_URL"),
            "tracing": _tracing(env),
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        """The settings, their URLs' passwords hidden (a repr may reach a log or a traceback)."""
        shown = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        for name in ("redis_url", "database_url", "notify_url"):
            if shown[name] is not None:
                shown[name] = redact_url(shown[name])
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in shown.items())})"


@dataclass(frozen=True)
class Tuning:
    """The timings and sizes of ezgraph's machinery, in one place (as rq's ``defaults.py``).

    They are not settings a user needs to change; tests may pass a copy with other values.
    """

    # Liveness: a worker that runs steps keeps ``<prefix>:alive:<worker>`` fresh.
    beat_every: float = 1.0  # seconds between heartbeats
    beat_ttl: int = 5  # seconds a heartbeat lasts: a worker silent this long counts as dead
    beat_after: float = 0.5  # a stock worker's step beats once it has run this long
    # Recovery (the watchdog pass and the dead workers' reaper), once a second.
    grace: float = 2.0  # seconds a step may look lost before it is acted on
    suspect_ttl_ms: int = 5_000  # a suspicion (a step or worker that looked lost) lasts this
    max_recoveries: int = 3  # times a step whose process died runs again before its run fails
    watch_read_chunk: int = 50  # runs whose steps one watchdog read takes (a memory bound)
    watch_limit: int = 500  # live runs one watchdog pass looks at, oldest first
    watch_steps: int = 2_000  # waiting steps of one run a pass looks at (a wide map's first)
    watch_queue_scan: int = 1_000  # a queue longer than this is not searched for lost jobs
    # Hand-over to SQL: ended runs are written in batches, one writer at a time.
    write_every: float = 0.2  # seconds between writes while steps keep ending...
    write_batch: int = 100  # ...or this many ended runs; also the runs per transaction
    idle_write_gap: float = 0.02  # an idle worker writes at once, at most this often
    write_retry: float = 0.02  # seconds before asking again for a held write lock
    write_steps_chunk: int = 1_000  # a wide run's steps written per transaction
    write_lock_ms: int = 2_000  # the write lock's lifetime (a writer that died holds it so long)
    sweep_age: float = 2.0  # the once-a-second sweep writes runs left unsaved this long
    follower_renew_every: float = 1.0  # persist --follow renews its announcement so often...
    follower_ttl: float = 3.0  # ...which lasts this long...
    follower_look_every: float = 1.0  # ...and a worker trusts a look at it this long
    follower_tick: float = 0.02  # seconds between the follower's looks at the unsaved set
    follower_retry: float = 1.0  # seconds before the follower tries again after a failed write
    stock_tick: float = 0.25  # a stock worker's thread looks this often when nothing waits
    # SQL calls: a database that does not answer counts as down (runs wait in Redis), and is
    # tried again after sql_retry seconds, doubling up to sql_retry_max while it stays down.
    sql_connect_timeout: int = 5  # seconds (PostgreSQL's connect_timeout)
    sql_statement_timeout: int = 30  # seconds a statement may run (PostgreSQL)
    sql_retry: float = 1.0
    sql_retry_max: float = 30.0
    # Notifications (FLOW_ORCHESTRATION_URL): a notifier thread POSTs the runs in SQL.
    notify_every: float = 1.0  # seconds between looks at the notifications due
    notify_batch: int = 100  # notifications one look takes at most
    notify_timeout: float = 10.0  # seconds to connect, and to read the answer, per POST
    notify_retries: int = 3  # a POST that fails is sent again at once, then 1 s, 2 s later...
    notify_backoff: float = 0.5  # ...(urllib3's Retry backoff_factor)
    notify_later: float = 5.0  # then the run waits this long, doubling per failed attempt...
    notify_later_max: float = 600.0  # ...up to this (urllib3's backoff, with a second of jitter)
    notify_lease: float = 120.0  # a notifier that took a run has this long to send it
    # The fast worker's loop.
    idle_wait: float = 1.0  # seconds an idle worker blocks on its queues' wake list
    idle_mark: float = 3.0  # seconds an empty claim marks its queues idle (only then they wake)
    batch_wait: float = 0.1  # how long an idle worker with runs to write waits for work
    long_step: float = 0.05  # after a step this long (seconds), claim one job at a time
    stuck_grace: float = 5.0  # a step this long past its timeout (it caught it) ends its worker
    stop_grace: float = 10.0  # a worker told to stop ends its current step within this, or exits
    wake_list_max: int = 8  # wake-ups waiting in one queue's list at most
    max_join_input: int = 1_000  # outputs a claim reads for a join (more: the step reads them)
    # Jobs and runs.
    compress_over: int = 1_024  # job data over this many bytes is compressed, as RQ does
    expire_chunk: int = 100  # RQ jobs of saved runs one call sets to expire at most
    read_chunk: int = 1_000  # mapped outputs one call reads at most (a join's input)
    map_chunk: int = 100  # a map's instances one call creates at most
    sweep_chunk: int = 100  # jobs of a stopped run one call cancels (or marks) at most
    lrem_max: int = 1_000  # a canceled job is taken out of a queue this long at most (LREM
    # reads the list whole): from a longer one, the claim that takes it drops it
    map_items_ttl: int = 86_400  # seconds a map's staged items are kept (a backstop: see MapItems)
    canceled_ttl: int = 86_400  # seconds a canceled job stays in RQ's canceled registry
    failed_ttl: int = 31_536_000  # seconds a lost job stays in RQ's failed registry (RQ's)
    wait_recheck: float = 0.5  # GraphOrchestrator.wait reads the status this often
    # Events (current_step().progress / emit): a run's stream keeps about this many, the
    # newest; a reader takes them this many per call, and a follower blocks this long.
    events_max: int = 10_000
    events_chunk: int = 1_000
    events_block: float = 0.5
    # Schedules: a tick missed by more than this many seconds (no scheduler ran) is skipped.
    schedule_grace: float = 60.0
    # Submission: runs per submit_run call (a call of 200 holds Redis about 5 ms)...
    submit_chunk: int = 200
    key_claim: float = 10.0  # ...how long a submitter's claim on an idempotency key holds...
    key_wait: float = 0.01  # ...and how often another one with that key looks again
    # Redis calls: a call that gets no answer in redis_timeout seconds is sent again (the same
    # request, whose reply the scripts keep reply_ttl seconds), by a worker until it answers,
    # by a client for client_patience seconds.
    redis_timeout: float = 5.0
    reply_ttl: int = 300
    client_patience: float = 30.0


TUNING = Tuning()


def _redis_url_from_env(env: Mapping[str, str]) -> str | None:
    """REDIS_URL, else RQ's own RQ_REDIS_URL (what ``rq worker`` reads), else the seed's
    REDIS_HOST/PORT/DB/PASSWORD; None when none is set (the embedded server)."""
    for name in ("REDIS_URL", "RQ_REDIS_URL"):
        if env.get(name):
            return env[name]
    if not any(env.get(name) for name in ("REDIS_HOST", "REDIS_PORT", "REDIS_DB")):
        return None
    host = env.get("REDIS_HOST") or "127.0.0.1"
    port = _int(env, "REDIS_PORT", 6379, 1, 65_535)
    db = _int(env, "REDIS_DB", 0, 0, 2**31)
    password = env.get("REDIS_PASSWORD")
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/{db}"


def _http_url(env: Mapping[str, str], name: str) -> str | None:
    """The http(s) URL ``name`` holds, or None when unset."""
    raw = env.get(name)
    if not raw:
        return None
    if not re.match(r"https?://[^/?#]+", raw):
        raise UsageError(f"{name} must be an http:// or https:// URL, got {redact_url(raw)!r}")
    return raw


def _tracing(env: Mapping[str, str]) -> str:
    """EZGRAPH_TRACING as one of :data:`TRACING_MODES` (1/true/yes mean on, 0/false/no off)."""
    raw = (env.get("EZGRAPH_TRACING") or "off").strip().lower()
    mode = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}.get(
        raw, raw
    )
    if mode not in TRACING_MODES:
        choices = ", ".join(TRACING_MODES)
        raise UsageError(f"EZGRAPH_TRACING must be one of {choices}, got {raw!r}")
    return mode


def _int(
    env: Mapping[str, str], name: str, default: int, low: int, high: int, but: int | None = None
) -> int:
    """The integer ``name`` holds, from ``low`` to ``high`` (``but`` excluded), or ``default``."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high or value == but:
        allowed = f"from {low} to {high}" + (f", not {but}" if but is not None else "")
        raise UsageError(f"{name} must be an integer {allowed}, got {raw!r}")
    return value


def _ints(env: Mapping[str, str], name: str) -> tuple[int, ...]:
    raw = env.get(name) or ""
    try:
        values = tuple(int(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{name} must be comma-separated integers, got {raw!r}") from None
    if any(not 0 <= value <= MAX_SECONDS for value in values):
        raise UsageError(f"{name} must be integers from 0 to {MAX_SECONDS}, got {raw!r}")
    return values


# A query parameter whose name holds one of these carries a secret (redis-py and libpq read
# ``?password=``; libpq ``sslpassword``, redis-py ``ssl_password``...).
_SECRET_NAME = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)
# ``?name=value`` or ``&name=value``: the value runs to the next ``&name=`` (a value may hold
# an unencoded ``&``) or to the end of the URL (a ``#`` in it is no fragment here).
_QUERY_PARAM = re.compile(r"[?&;]([^=&;?#]*)=(.*?)(?=[&;][\w.-]+=|$)", re.DOTALL)


def redact_url(url: str) -> str:
    """Return ``url`` with its passwords replaced by ``***``, for error messages and logs.

    Whatever the password holds: unencoded ``@ / ? # :`` (which urllib and the drivers read
    as the end of the user part), a username, or a ``?password=`` in the query string.
    """
    shown, end = [], 0
    for start, stop in _merged(_secret_spans(url)):
        shown += [url[end:start], "***"]
        end = stop
    return "".join([*shown, url[end:]])


def redact_text(text: str, url: str) -> str:
    """Return ``text`` (a driver's error message about ``url``) with any form of ``url``'s
    passwords hidden: as written, decoded or percent-encoded, and any quoted piece of one (a
    parser quotes the part it misread: ``Port could not be cast to integer value as 'pa'``)."""
    secrets = [url[start:stop] for start, stop in _secret_spans(url)]
    forms = set()
    for secret in secrets:
        forms |= {secret, unquote(secret), quote(secret, safe=""), quote(unquote(secret), safe="")}
    for form in sorted(filter(None, forms), key=len, reverse=True):
        text = text.replace(form, "***")

    def hide_piece(quoted: re.Match[str]) -> str:
        piece = quoted.group(2)
        if piece and any(piece in secret for secret in secrets):
            return f"{quoted.group(1)}***{quoted.group(1)}"
        return quoted.group(0)

    return re.sub(r"(['\"])(.*?)\1", hide_piece, text)


def unencoded_in_password(url: str, characters: str) -> bool:
    """True when the password in ``url``'s user part holds one of ``characters`` as is: they
    must be percent-encoded, or the drivers misread the URL (and may show part of it)."""
    span = _password_span(url, skip=_query_secret_spans(url))
    return span is not None and any(char in url[span[0] : span[1]] for char in characters)


def _secret_spans(url: str) -> list[tuple[int, int]]:
    """Where the passwords are in ``url``: the user part's, and the query's secret values."""
    password = _password_span(url)
    return [*([password] if password else []), *_query_secret_spans(url)]


def _password_span(url: str, skip: Sequence[tuple[int, int]] = ()) -> tuple[int, int] | None:
    """Where the user part's password is: after the user's ``:``, up to the *last* ``@`` (as
    urllib and redis-py read it, so a password holding ``@`` is found whole, and one holding
    ``/ ? #`` too, where urllib would end the host part). An ``@`` in ``skip`` is not looked
    at; one in a query string may make the span longer than the password: never shorter."""
    begin = url.find("://")
    begin = 0 if begin < 0 else begin + 3
    at = len(url)
    while (at := url.rfind("@", begin, at)) >= 0:
        if not any(start <= at < stop for start, stop in skip):
            colon = url.find(":", begin, at)
            return (colon + 1, at) if 0 <= colon < at - 1 else None
    return None


def _query_secret_spans(url: str) -> list[tuple[int, int]]:
    """Where the values of the query's secret parameters (``?password=``...) are."""
    return [
        match.span(2)
        for match in _QUERY_PARAM.finditer(url)
        if _SECRET_NAME.search(match.group(1)) and match.group(2)
    ]


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``spans`` sorted, overlapping ones joined."""
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(stop, merged[-1][1]))
        else:
            merged.append((start, stop))
    return merged
