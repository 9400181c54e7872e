"""Opening the Redis connection the settings describe, with a one-line error when it fails.

It also names the Redis commands ezgraph needs (:data:`REDIS_COMMANDS`), the list an ACL user
of ezgraph gets (:func:`acl_rule`; the README's *Security* section shows it).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from redis import Redis
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from .embedded import ensure_server
from .errors import ConnectionFailed, UnsafeRedis
from .settings import Settings, redact_text, redact_url, unencoded_in_password

# Every command that ezgraph (its Lua scripts and its Python code), RQ's workers (fork,
# SimpleWorker, scheduler), `rq info` and rq-dashboard send: an ACL user allowed only these
# runs all of them (tests/e2e/test_redis_security.py runs them as such a user). Not CONFIG:
# CONFIG GET shows requirepass; INFO tells the version (RQ reads it) and the maxmemory policy.
# Redis before 7.2 does not know CLIENT SETINFO (redis-py sends it, and ignores a refusal);
# RQ 3's worker reads its address with CLIENT INFO (Redis 6.2+; CLIENT LIST before).
REDIS_COMMANDS = (
    # connection, server
    *("ping", "select", "info", "client|setname", "client|list", "client|info"),
    "client|setinfo",
    # transactions, scripts, pub/sub (RQ's worker commands, the end of a run)
    *("multi", "exec", "discard", "watch", "unwatch"),
    *("eval", "evalsha", "script|load"),
    *("subscribe", "unsubscribe", "publish", "pubsub|numsub"),
    # keys, strings
    *("get", "set", "del", "unlink", "exists", "scan", "rename"),
    *("expire", "pexpire", "persist", "ttl", "pttl"),
    # hashes
    *("hget", "hset", "hsetnx", "hmget", "hgetall", "hdel", "hexists", "hincrby", "hincrbyfloat"),
    *("hscan", "hlen"),
    # lists (queues, claimed lists)
    *("lpush", "rpush", "lpop", "rpop", "blpop", "lmove", "blmove", "lrem", "lrange", "llen"),
    *("lpos", "ltrim"),
    # sets, sorted sets (RQ's registries), streams (RQ's results, runs' events)
    *("sadd", "srem", "smembers"),
    *("zadd", "zrem", "zcard", "zscore", "zrange", "zrangebyscore", "zremrangebyscore"),
    *("zrevrange", "zrevrangebyscore"),
    *("xadd", "xlen", "xread", "xrange", "xrevrange"),
)


def acl_rule(prefix: str = "ezgraph") -> str:
    """The ACL rules of a Redis user that can run ezgraph and RQ on keys and channels
    ``rq:*`` and ``<prefix>:*``, and nothing else (``ACL SETUSER name on >password <rules>``).
    """
    commands = " ".join(f"+{command}" for command in REDIS_COMMANDS)
    return f"resetkeys ~rq:* ~{prefix}:* resetchannels &rq:* &{prefix}:* -@all {commands}"


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
        ConnectionFailed: naming the URL without its password (nor any piece of it).
    """
    url = redis_url(settings)
    try:
        _check_url(url)
        connection = Redis.from_url(url)
    except ValueError as error:
        raise _failure("invalid Redis URL", url, error) from None
    if check:
        try:
            connection.ping()
        except (AuthenticationError, ResponseError) as error:
            refused = isinstance(error, AuthenticationError) or any(
                word in str(error) for word in ("NOAUTH", "WRONGPASS")
            )
            raise _failure(
                "Redis at", url, error, "refused the credentials" if refused else "failed"
            ) from None
        except (RedisError, OSError) as error:
            raise _failure("cannot reach Redis at", url, error) from None
    return connection


def check_eviction(connection: Redis) -> str:
    """The server's ``maxmemory_policy``, read from ``INFO memory`` (CONFIG may be denied).

    Raises:
        UnsafeRedis: for a policy that evicts keys: at ``maxmemory`` it would delete queued jobs
            and runs in flight without a word (``allkeys-*``), or ezgraph's request replies and
            heartbeats (``volatile-*``). ezgraph needs ``noeviction``: at the limit, submits
            fail in one line and workers wait for memory.
    """
    try:
        policy = str(connection.info("memory").get("maxmemory_policy", "noeviction"))
    except ResponseError:  # INFO denied: a user without it
        return "not checked (INFO is denied)"
    if policy != "noeviction":
        raise UnsafeRedis(
            f"Redis evicts keys at maxmemory (maxmemory-policy {policy}): it would lose queued"
            " runs silently; set maxmemory-policy noeviction"
        )
    return policy


def _failure(what: str, url: str, error: Exception, verb: str = "") -> ConnectionFailed:
    """``<what> <url> [<verb>]: <error>``, on one line, every form of the password hidden."""
    detail = " ".join(redact_text(str(error), url).split())
    return ConnectionFailed(f"{what} {redact_url(url)}{' ' + verb if verb else ''}: {detail}")


def _check_url(url: str) -> None:
    """Refuse what redis-py would misread.

    A password holding ``/ ? #`` unencoded ends the host part where it stands, so the client
    would try a wrong host, port or database (and its error would show a piece of the
    password); redis-py reads a database that is not a number as db 0.
    """
    if unencoded_in_password(url, "/?#"):
        raise ValueError(
            "its password holds / ? or # unencoded: percent-encode the password"
            " (urllib.parse.quote(password, safe=''))"
        )
    parts = urlsplit(url)
    database = parts.path.lstrip("/")
    if parts.scheme in ("redis", "rediss") and database and not database.isdigit():
        raise ValueError(f"the database {database!r} is not a number")
