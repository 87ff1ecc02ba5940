"""The forwarder worker's watchdog: a cluster command that outlives its
bound ends the process, and the supervisor (or systemd) starts a new one.

Seen: paramiko waits an hour for a channel by default, and forever for an
SFTP reply (an sshd stopped mid-session; both bounded since). It still
waits without a time-out for the answer to an exec request, once the
channel is open. A worker caught in such a wait follows no job: the port
stays open, and at the next rollover nothing serves it. A bound is a
command's own worst case twice over, so only a hang trips it; every
thread's stack goes to the log first, to say where it waited.
"""

from __future__ import annotations

import faulthandler
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("slurm_persist.watchdog")

# The worker's exit code for a hang: not final (supervisor.FINAL), so the
# supervisor replaces the worker.
STUCK = 3
EVERY = 5.0


def _exit(what: str, seconds: float) -> None:
    log.critical("state=stuck call=%r bound=%.0f action=exit code=%d", what, seconds, STUCK)
    faulthandler.dump_traceback(all_threads=True)
    os._exit(STUCK)


class Watchdog:
    """watch() the calls that may hang; start() looks every EVERY seconds."""

    def __init__(self, on_stuck: Callable[[str, float], None] = _exit, every: float = EVERY):
        self._on_stuck, self._every = on_stuck, every
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[float, str, float]] = {}  # token -> deadline, what, bound
        self._tokens = itertools.count()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, what: str, seconds: float) -> Iterator[None]:
        token = next(self._tokens)
        with self._lock:
            self._watched[token] = (time.monotonic() + seconds, what, seconds)
        try:
            yield
        finally:
            with self._lock:
                del self._watched[token]

    def check(self) -> None:
        """One look: on_stuck for the first call past its deadline."""
        now = time.monotonic()
        with self._lock:
            overdue = [(what, bound) for deadline, what, bound in self._watched.values()
                       if deadline < now]
        if overdue:
            self._on_stuck(*overdue[0])

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Undoes start(); calls being watched stay registered until they end."""
        if self._thread is not None:
            self._stopping.set()
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.wait(self._every):
            self.check()
