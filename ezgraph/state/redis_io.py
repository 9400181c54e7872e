"""Talking to Redis on the hot path: ezgraph's Lua scripts and pipelined reads, sent directly.

Each script is ``protocol.lua_header()`` + ``rq_compat.lua_constants()`` +
``lua/lib/prelude.lua`` + ``lua/lib/rq.lua`` + ``lua/lib/run.lua`` + its own body, and is called
with the head every script reads first.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from typing import Any

import hiredis
from redis import Redis
from redis.commands.core import Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, OutOfMemoryError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..rq_compat import RQ_PREFIX, lua_constants, utcnow_iso
from ..settings import Tuning
from .protocol import SCRIPTS, Head, lua_header

LIBRARIES = ("prelude", "rq", "run")

logger = logging.getLogger(__name__)


def script_sources(tuning: Tuning) -> dict[str, str]:
    """Every script's full source."""
    lua = resources.files("ezgraph.state") / "lua"
    libraries = "\n".join((lua / "lib" / f"{name}.lua").read_text() for name in LIBRARIES)
    head = lua_header(tuning) + lua_constants() + libraries
    return {name: f"{head}\n{(lua / f'{name}.lua').read_text()}" for name in SCRIPTS}


_sources: dict[Tuning, dict[str, str]] = {}


class ScriptRunner:
    """Calls ezgraph's scripts and pipelined reads, on one connection per thread.

    Every call carries this thread's caller id and a request number: a call that times out, or
    whose connection drops, is sent again as the same request, and the scripts that change state
    answer it with the first call's reply if Redis ran that one (it may have, and ran the
    resend after it). So a stalled Redis delays calls and never doubles them.
    """

    def __init__(self, connection: Redis, prefix: str, tuning: Tuning) -> None:
        self.connection = connection
        self.prefix = prefix
        self.tuning = tuning
        sources = _sources.get(tuning)
        if sources is None:
            sources = _sources[tuning] = script_sources(tuning)
        self._sources = sources
        self._scripts: dict[str, Script] = {
            name: connection.register_script(source) for name, source in sources.items()
        }
        self._local = threading.local()  # this thread's connection, caller id and requests

    def call(
        self,
        name: str,
        *args: Any,
        patience: float = 0.0,
        until: threading.Event | None = None,
        wait_for_memory: bool = False,
    ) -> Any:
        """Run script ``name`` with the head and ``args``; a call Redis does not answer (a
        timeout, a dropped connection) is sent again for ``patience`` seconds (or until
        ``until`` is set), then its error raised. No memory left (Redis refuses
        a script before it runs: nothing was written) is raised at once, unless
        ``wait_for_memory`` (a worker recording what it ran): then it is waited out."""
        return self._call_again([*self._head(), *args], name, patience, until, wait_for_memory)

    def call_each(
        self, name: str, argvs: Iterable[Sequence[Any]], patience: float = 0.0
    ) -> Iterator[Any]:
        """Run script ``name`` once per item of ``argvs`` (each without the head), keeping two
        calls in flight: the next item is built while Redis runs the call before it. Yields
        the replies in order. After a failure, the calls not answered are sent again one by
        one as :meth:`call` sends them: each of the two in flight is a caller of its own, so a
        call Redis ran is answered with its kept reply, never run twice."""
        pending = iter(argvs)
        in_flight: deque[list[Any]] = deque()
        sent = 0
        try:
            while True:
                try:
                    for args in pending:
                        argv = [*self._head(slot=sent % 2), *args]
                        sent += 1
                        in_flight.append(argv)
                        self._send([("EVALSHA", self._scripts[name].sha, 0, *argv)])
                        if len(in_flight) == 2:
                            reply = self._receive()
                            in_flight.popleft()
                            yield reply
                    while in_flight:
                        reply = self._receive()
                        in_flight.popleft()
                        yield reply
                    return
                except (RedisError, OSError) as error:
                    self._drop_connection()  # a reply may be left unread
                    if not isinstance(error, self._SENT_AGAIN):  # no memory left too: a client's
                        raise
                    if not isinstance(error, NoScriptError):  # Redis lost its scripts: no news
                        logger.warning("Redis did not answer %s (%s); sending again", name, error)
                    while in_flight:  # one by one, then the rest pipelined again
                        reply = self._call_again(in_flight[0], name, patience, None)
                        in_flight.popleft()
                        yield reply
        finally:
            if in_flight:  # the caller stopped early: its replies must not be read as others'
                self._drop_connection()

    # Errors after which a pipelined call is sent again (no memory left is not one of them).
    _SENT_AGAIN = (RedisConnectionError, RedisTimeoutError, OSError, NoScriptError)

    def _head(self, slot: int | None = None) -> Head:
        """The head of this thread's next call (``slot``: one of its calls in flight)."""
        local = self._local
        if not hasattr(local, "caller"):
            local.caller, local.requests = f"{os.getpid()}-{uuid.uuid4().hex[:12]}", 0
        local.requests += 1
        caller = local.caller if slot is None else f"{local.caller}.{slot}"
        return Head(
            self.prefix,
            RQ_PREFIX,
            utcnow_iso(),
            repr(time.time()),
            caller,
            str(local.requests),
        )

    def _call_again(
        self,
        argv: list[Any],
        name: str,
        patience: float,
        until: threading.Event | None,
        wait_for_memory: bool = False,
    ) -> Any:
        """One call (``argv`` with its head), sent again while Redis does not answer (see
        :meth:`call`)."""
        deadline = time.monotonic() + patience
        delay = 0.05
        while True:
            try:
                return self._evalsha(name, argv)
            except (RedisConnectionError, RedisTimeoutError, OSError, ResponseError) as error:
                full = out_of_memory(error)
                if isinstance(error, ResponseError) and not (full and wait_for_memory):
                    raise
                late = time.monotonic() + delay > deadline and not full
                if late or (until is not None and until.is_set()):
                    raise
                what = "is out of memory at" if full else "did not answer"
                logger.warning("Redis %s %s (%s); sending it again", what, name, error)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _evalsha(self, name: str, argv: list[Any]) -> Any:
        """One EVALSHA; when Redis does not have the script (a restart, or SCRIPT FLUSH), one
        EVAL of its source, which Redis keeps: never a LOAD then an EVALSHA, between which
        another client's SCRIPT FLUSH could land."""
        script = self._scripts[name]
        try:
            return self._raw([("EVALSHA", script.sha, 0, *argv)])[0]
        except NoScriptError:
            return self._raw([("EVAL", self._sources[name], 0, *argv)])[0]

    def read_pipelined(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Raw replies of ``commands`` in one round trip. On any error redis-py's pipeline,
        with its retries, sends them again: so only commands that may run twice (reads, the
        watchdog's ``SET NX`` and ``PTTL``)."""
        try:
            return self._raw(commands)
        except (RedisError, OSError):
            pipe = self.connection.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)  # type: ignore[no-untyped-call]
            return list(pipe.execute())

    def _raw(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """The replies of ``commands``, sent in one write past redis-py's command and pipeline
        layers, on this thread's own connection. A connection that failed, or that still owes
        replies after an error reply, is closed; the next call opens it again."""
        self._send(commands)
        replies: list[Any] = []
        try:
            for _ in commands:
                replies.append(self._receive())
            return replies
        except RedisError as error:
            if isinstance(error, ResponseError) and len(replies) + 1 < len(commands):
                self._local.connection.disconnect()  # replies after the failed one are unread
            raise

    def _send(self, commands: Sequence[tuple[Any, ...]]) -> None:
        """Write ``commands`` on this thread's connection (closed if that fails)."""
        connection = self._own_connection()
        try:
            # hiredis packs what redis-py's serializer would, without its per-argument checks.
            packed = b"".join(hiredis.pack_command(command) for command in commands)
            connection.send_packed_command([packed])
        except (RedisConnectionError, RedisTimeoutError, OSError):
            connection.disconnect()
            raise

    def _receive(self) -> Any:
        """The next reply on this thread's connection (closed if reading fails)."""
        connection = self._local.connection
        try:
            return connection.read_response()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            connection.disconnect()
            raise

    def _drop_connection(self) -> None:
        """Close this thread's connection (the next call opens it again)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.disconnect()

    def _own_connection(self) -> Any:
        """A connection of the client's pool that this thread keeps: no check-out and return
        per call (which redis-py pays in a poll() and locking). A forked child takes its own."""
        connection = getattr(self._local, "connection", None)
        if connection is None or connection.pid != os.getpid():
            connection = self.connection.connection_pool.get_connection()
            # Its own timeout: a call Redis does not answer is sent again (see call()).
            connection.socket_timeout = self.tuning.redis_timeout
            connection.disconnect()  # type: ignore[no-untyped-call]  # reconnects with it
            self._local.connection = connection
        return connection


def out_of_memory(error: BaseException) -> bool:
    """Whether Redis refused a command for lack of memory (at ``maxmemory``, ``noeviction``):
    redis-py's OutOfMemoryError, or the raw ``OOM`` error reply."""
    return isinstance(error, OutOfMemoryError) or (
        isinstance(error, ResponseError) and str(error).startswith("OOM")
    )
