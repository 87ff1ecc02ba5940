"""The watchdog of a process that talks to the cluster (the forwarder
worker, a CLI command): a cluster command that outlives its bound is cut
loose, and if that does not free it, the process ends; a worker's
supervisor (or systemd) then starts a new one.

Seen: paramiko waits an hour for a channel by default, and forever for an
SFTP reply (an sshd stopped mid-session; both bounded since). It still
waits without a time-out for the answer to an exec or a subsystem request,
once the channel is open. A worker caught in such a wait follows no job:
the port stays open, and at the next rollover nothing serves it. A bound is a
command's own worst case twice over, so only a hang trips it. Then the
call's unstick() runs first (Site closes that node's connection: the wait
raises, and the command goes to the next node; a new worker would try the
same node first again). A call still there GRACE seconds later ends the
process, with every thread's stack in the log to say where it waited.
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
from dataclasses import dataclass

log = logging.getLogger("slurm_persist.watchdog")

# The worker's exit code for a hang: not final (supervisor.FINAL), so the
# supervisor replaces the worker.
STUCK = 3
EVERY = 5.0
GRACE = 30.0


def _exit(what: str, seconds: float) -> None:
    # Stacks first, then a plain write: a lock held by the stuck thread
    # (logging's, say) must not keep the process from ending.
    faulthandler.dump_traceback(all_threads=True)
    os.write(2, f"slurm_persist.watchdog state=stuck call={what!r} bound={seconds:.0f} "
                f"action=exit code={STUCK}\n".encode())
    os._exit(STUCK)


@dataclass(eq=False)
class _Watched:
    deadline: float
    what: str
    bound: float
    unstick: Callable[[], None] | None


class Watchdog:
    """watch() the calls that may hang; start() looks every EVERY seconds."""

    def __init__(self, on_stuck: Callable[[str, float], None] = _exit, every: float = EVERY):
        self._on_stuck, self._every = on_stuck, every
        self._lock = threading.Lock()
        self._watched: dict[int, _Watched] = {}
        self._tokens = itertools.count()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, what: str, seconds: float,
              unstick: Callable[[], None] | None = None) -> Iterator[None]:
        token = next(self._tokens)
        with self._lock:
            self._watched[token] = _Watched(time.monotonic() + seconds, what, seconds, unstick)
        try:
            yield
        finally:
            with self._lock:
                del self._watched[token]

    def watching(self) -> list[tuple[str, float]]:
        """What is being watched: (what, bound) each."""
        with self._lock:
            return [(w.what, w.bound) for w in self._watched.values()]

    def check(self) -> None:
        """One look: unstick() each call past its deadline, once, then
        on_stuck for one still there GRACE seconds later."""
        now = time.monotonic()
        with self._lock:
            overdue = [w for w in self._watched.values() if w.deadline < now]
            stuck = [w for w in overdue if w.unstick is None]
            loosen = [(w, w.unstick) for w in overdue if w.unstick is not None]
            for w, _ in loosen:
                w.deadline, w.unstick = now + GRACE, None
        for w, unstick in loosen:
            log.warning("state=stuck call=%r bound=%.0f action=close", w.what, w.bound)
            unstick()
        if stuck:
            self._on_stuck(stuck[0].what, stuck[0].bound)

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
