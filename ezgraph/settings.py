"""Settings: read once from the environment, then passed down explicitly.

Precedence is CLI flag > environment variable > default. Every variable is documented in the
README's "Configuration" section; :data:`ENV_VARS` is the list the docs test checks against.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from .errors import UsageError

DEFAULT_DATABASE_URL = "sqlite:///ezgraph.db"
MAX_SECONDS = 1_000_000_000  # ~31 years: the largest timeout, interval or TTL accepted

ENV_VARS = (
    "REDIS_URL",
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
)


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
    # How long RQ keeps a finished step's job hash: it is also the window in which a re-run
    # parent is refused a duplicate successor, so it must outlive any run.
    result_ttl: int = 86_400
    # How long a run's bookkeeping stays in Redis after it was persisted to SQL.
    run_ttl: int = 3_600
    # Jobs an ezgraph worker claims per Redis call (1 = one at a time, like RQ).
    claim_batch: int = 8

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
            "run_ttl": _int(env, "EZGRAPH_RUN_TTL", 3_600, 1, MAX_SECONDS),
            "claim_batch": _int(env, "EZGRAPH_CLAIM_BATCH", 8, 1, 1_000),
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


def _redis_url_from_env(env: Mapping[str, str]) -> str | None:
    if env.get("REDIS_URL"):
        return env["REDIS_URL"]
    if not any(env.get(name) for name in ("REDIS_HOST", "REDIS_PORT", "REDIS_DB")):
        return None
    host = env.get("REDIS_HOST") or "127.0.0.1"
    port = _int(env, "REDIS_PORT", 6379, 1, 65_535)
    db = _int(env, "REDIS_DB", 0, 0, 2**31)
    password = env.get("REDIS_PASSWORD")
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/{db}"


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


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, for error messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
