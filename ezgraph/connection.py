"""Opening the Redis connection the settings describe, with a one-line error when it fails."""

from __future__ import annotations

from urllib.parse import urlsplit

from redis import Redis
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from .embedded import ensure_server
from .errors import ConnectionFailed
from .settings import Settings, redact_url


def redis_url(settings: Settings) -> str:
    """The URL to reach Redis: the configured one, or the embedded server (started if needed)."""
    if settings.redis_url is not None:
        return settings.redis_url
    try:
        return ensure_server(settings.home)
    except OSError as error:  # EZGRAPH_HOME is a file, or not writable...
        raise ConnectionFailed(
            f"cannot start the embedded Redis under {settings.home} (EZGRAPH_HOME): {error}"
        ) from None


def connect(settings: Settings, check: bool = True) -> Redis:
    """Open a Redis connection; with ``check``, PING it so a bad URL fails here, in one line.

    Raises:
        ConnectionFailed: naming the URL without its password.
    """
    url = redis_url(settings)
    try:
        _check_db(url)
        connection = Redis.from_url(url)
    except ValueError as error:
        raise ConnectionFailed(f"invalid Redis URL {redact_url(url)}: {error}") from None
    if check:
        try:
            connection.ping()
        except AuthenticationError as error:
            raise ConnectionFailed(
                f"Redis at {redact_url(url)} refused the credentials: {error}"
            ) from None
        except ResponseError as error:
            if "NOAUTH" in str(error) or "WRONGPASS" in str(error):
                raise ConnectionFailed(
                    f"Redis at {redact_url(url)} refused the credentials: {error}"
                ) from None
            raise ConnectionFailed(f"Redis at {redact_url(url)} failed: {error}") from None
        except (RedisError, OSError) as error:
            raise ConnectionFailed(f"cannot reach Redis at {redact_url(url)}: {error}") from None
    return connection


def _check_db(url: str) -> None:
    """redis-py reads a database that is not a number as db 0: refuse it instead."""
    parts = urlsplit(url)
    database = parts.path.lstrip("/")
    if parts.scheme in ("redis", "rediss") and database and not database.isdigit():
        raise ValueError(f"the database {database!r} is not a number")
