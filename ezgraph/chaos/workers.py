"""The worker processes a chaos audit starts, strikes at, and replaces."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ..connection import redis_url
from ..context import Context
from ..state.protocol import as_text

Process = subprocess.Popen[bytes]


class Workers:
    """``count`` ``ezgraph worker`` processes on the audit's Redis and database; one that
    ends by itself is counted and replaced."""

    def __init__(
        self, context: Context, count: int, logs: Path, log: Callable[[str], None]
    ) -> None:
        self.context = context
        self.logs = logs  # each worker's stderr, to tell why one ended by itself
        self.log = log
        self.procs: list[Process] = []
        self.stderr: dict[int, Path] = {}  # by pid
        self.exits = 0  # workers that ended by themselves (the audit stopped none of them)
        for _ in range(count):
            self.spawn()

    def spawn(self) -> Process:
        """Start one more worker."""
        settings = self.context.settings
        env = dict(os.environ)
        env.update(
            REDIS_URL=redis_url(settings),  # as configured: user, password and TLS kept
            DATABASE_URL=settings.database_url,
            EZGRAPH_MODULES=self.context.graph().package,
            EZGRAPH_KEY_PREFIX=settings.key_prefix,
        )
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path.cwd()), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        self.logs.mkdir(parents=True, exist_ok=True)
        path = self.logs / f"worker-{len(self.stderr)}.log"
        with path.open("wb") as err:  # the worker writes to its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "ezgraph", "worker"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.stderr[proc.pid] = path
        self.procs.append(proc)
        return proc

    def busy(self) -> tuple[str, Process, list[str]] | None:
        """A live worker of this audit holding steps (picked at random): its name, process
        and the ids of the jobs it holds."""
        connection, keys = self.context.connection, self.context.keys
        by_pid: dict[int, str] = {}
        for raw in connection.smembers(keys.workers):
            name = as_text(raw) or ""
            pid = connection.get(keys.alive(name))
            if pid is not None:
                by_pid[int(pid)] = name
        alive = [p for p in self.procs if p.poll() is None and p.pid in by_pid]
        random.shuffle(alive)
        for proc in alive:
            held = self.held(by_pid[proc.pid])
            if held:
                return by_pid[proc.pid], proc, held
        return None

    def held(self, name: str) -> list[str]:
        """The ids of the jobs worker ``name`` claimed and has not finished."""
        claimed = self.context.connection.lrange(self.context.keys.claimed(name), 0, -1)
        return [as_text(i) or "" for i in claimed]

    def all_held(self) -> list[str]:
        """The ids of the jobs every worker holds."""
        names = self.context.connection.smembers(self.context.keys.workers)
        return [job for raw in names for job in self.held(as_text(raw) or "")]

    def kill(self, proc: Process) -> None:
        """SIGKILL ``proc`` (a crash: nothing runs after it) and start a replacement."""
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.procs.remove(proc)
        self.spawn()

    def replace_exited(self) -> None:
        """Count and replace the workers that ended by themselves."""
        for proc in [p for p in self.procs if p.poll() is not None]:
            self.exits += 1
            lines = self.stderr[proc.pid].read_text(errors="replace").strip().splitlines()
            last = lines[-1] if lines else "(nothing on stderr)"
            self.log(f"a worker exited by itself with code {proc.returncode}: {last}")
            self.procs.remove(proc)
            self.spawn()

    def stop(self) -> None:
        """Stop every worker (a paused one is woken first to hear SIGTERM)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
