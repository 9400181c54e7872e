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
    modules: str = "modules"
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
            "modules": env.get("EZGRAPH_MODULES") or "modules",
            "home": Path(env.get("EZGRAPH_HOME") or ".ezgraph"),
            "key_prefix": env.get("EZGRAPH_KEY_PREFIX") or "ezgraph",
            "max_payload_bytes": _int(env, "EZGRAPH_MAX_PAYLOAD", 1_000_000),
            "job_timeout": _int(env, "EZGRAPH_JOB_TIMEOUT", 180),
            "retries": _int(env, "EZGRAPH_RETRIES", 0),
            "retry_intervals": _ints(env, "EZGRAPH_RETRY_INTERVALS"),
            "result_ttl": _int(env, "EZGRAPH_RESULT_TTL", 86_400),
            "run_ttl": _int(env, "EZGRAPH_RUN_TTL", 3_600),
            "claim_batch": _int(env, "EZGRAPH_CLAIM_BATCH", 8),
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
    port = _int(env, "REDIS_PORT", 6379)
    db = _int(env, "REDIS_DB", 0)
    password = env.get("REDIS_PASSWORD")
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/{db}"


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"{name} must be an integer, got {raw!r}") from None


def _ints(env: Mapping[str, str], name: str) -> tuple[int, ...]:
    raw = env.get(name) or ""
    try:
        return tuple(int(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{name} must be comma-separated integers, got {raw!r}") from None


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
