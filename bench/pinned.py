"""The relays on a core of their own: a keep-alive run where the forwarder
and the gate have CPU 1 to themselves, and every other process of the
machine (OpenSSH, the server, Docker, the load tool, the sandbox's SLURM)
shares CPU 0.

On a real site the forwarder runs on the laptop and the gate on a compute
node, each beside cores the SSH hops and the server do not use. On the
2-core build machine they share both cores with everything else, and
under `wrk -c50` every path is CPU-bound, so that run weighs the relays'
CPU against OpenSSH's rather than their cost in time. This run separates
the two: both paths get one core for what they have in common, and ours
gets the second for its relays (the baseline leaves it idle).

Affinity belongs to a thread, not to a process: every thread is pinned
(the first version pinned only each process's first thread, and Docker's
and the agent's other threads ran on the relays' core). Each thread's
affinity is read first and put back afterwards; one born meanwhile (it
inherits its parent's) gets the machine's full set back. Kernel threads
are left alone. Pinning other users' processes needs CAP_SYS_NICE:
without it the run is skipped and the report says why.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .procs import command, kernel_thread, role

RELAYS = ("forwarder", "gate")
SHARED_CPU, RELAY_CPU = 0, 1


class CannotPin(Exception):
    """Fewer than two CPUs here, or no right to pin other users' processes."""


def pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def threads(pid: int) -> list[int]:
    try:
        return [int(entry) for entry in os.listdir(f"/proc/{pid}/task")]
    except OSError:  # gone meanwhile
        return []


def affinity(tid: int) -> set[int] | None:
    try:
        return os.sched_getaffinity(tid)
    except OSError:  # gone meanwhile
        return None


class Pinned:
    """`with Pinned(forwarder):` the relays' threads on RELAY_CPU, every
    other user thread on SHARED_CPU, this one (so the load tool it starts)
    too. among: the processes to pin (all of the machine's by default)."""

    def __init__(self, forwarder: int, among: Callable[[], list[int]] = pids):
        self.forwarder, self.among = forwarder, among
        self.everything = os.sched_getaffinity(0)
        if not {SHARED_CPU, RELAY_CPU} <= self.everything:
            raise CannotPin(f"needs CPUs {SHARED_CPU} and {RELAY_CPU}; this process may use "
                            f"{sorted(self.everything)}")
        self.before: dict[int, set[int]] = {}

    def _threads(self) -> dict[int, int]:
        """Each user thread, and the CPU it goes on."""
        where = {}
        for pid in self.among():
            if not kernel_thread(pid):
                cpu = RELAY_CPU if role(pid, command(pid), self.forwarder) in RELAYS else SHARED_CPU
                where.update(dict.fromkeys(threads(pid), cpu))
        return where

    def __enter__(self) -> Pinned:
        where = self._threads()
        self.before = {tid: mask for tid in where if (mask := affinity(tid)) is not None}
        os.sched_setaffinity(0, {SHARED_CPU})
        try:
            for tid in self.before:
                _set(tid, {where[tid]})
        except PermissionError as exc:
            self.__exit__()
            raise CannotPin(f"pinning another user's process needs CAP_SYS_NICE: {exc}") from None
        return self

    def __exit__(self, *_exc: object) -> None:
        os.sched_setaffinity(0, self.everything)
        for tid in self._threads():
            now = affinity(tid)
            was = self.before.get(tid)
            if was is None and now in ({SHARED_CPU}, {RELAY_CPU}):
                was = self.everything  # born meanwhile, of a pinned parent
            if now is not None and was is not None and was != now:
                try:
                    _set(tid, was)
                except PermissionError:
                    pass  # nor could it have been pinned


def _set(tid: int, cpus: set[int]) -> None:
    try:
        os.sched_setaffinity(tid, cpus)
    except PermissionError:
        raise
    except OSError:  # gone meanwhile
        pass
