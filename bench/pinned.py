"""The relays on a core of their own: a keep-alive run where the forwarder
and the gate have CPU 1, and everything else on either path (OpenSSH, the
server, Docker's port publishing, the load tool) shares CPU 0.

On a real site the forwarder runs on the laptop and the gate on a compute
node, each beside cores the SSH hops and the server do not use. On the
2-core build machine they share both cores with everything else, and
under `wrk -c50` every path is CPU-bound, so that run weighs the relays'
CPU against OpenSSH's rather than their cost in time. This run separates
the two: both paths get one core for what they have in common, and ours
gets the second for its relays (the baseline leaves it idle).

Every process's affinity is read first and put back afterwards; one born
meanwhile (it inherits its parent's) gets the machine's full set back.
Pinning other users' processes needs CAP_SYS_NICE: without it the run is
skipped and the report says why.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .procs import command, role

RELAYS = ("forwarder", "gate")
SHARED = ("ssh", "sshd", "server", "docker")
SHARED_CPU, RELAY_CPU = 0, 1


class CannotPin(Exception):
    """Fewer than two CPUs here, or no right to pin other users' processes."""


def pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def affinity(pid: int) -> set[int] | None:
    try:
        return os.sched_getaffinity(pid)
    except OSError:  # gone meanwhile
        return None


class Pinned:
    """`with Pinned(forwarder):` the relays on RELAY_CPU; the rest of both
    paths, and this process (so the load tool it starts), on SHARED_CPU.
    among: the processes to look at (all of the machine's by default)."""

    def __init__(self, forwarder: int, among: Callable[[], list[int]] = pids):
        self.forwarder, self.among = forwarder, among
        self.everything = os.sched_getaffinity(0)
        if not {SHARED_CPU, RELAY_CPU} <= self.everything:
            raise CannotPin(f"needs CPUs {SHARED_CPU} and {RELAY_CPU}; this process may use "
                            f"{sorted(self.everything)}")
        self.before: dict[int, set[int]] = {}

    def __enter__(self) -> Pinned:
        self.before = {pid: mask for pid in self.among() if (mask := affinity(pid)) is not None}
        os.sched_setaffinity(0, {SHARED_CPU})
        try:
            for pid in self.before:
                where = role(pid, command(pid), self.forwarder)
                cpu = RELAY_CPU if where in RELAYS else SHARED_CPU if where in SHARED else None
                if cpu is not None:
                    _set(pid, {cpu})
        except PermissionError as exc:
            self.__exit__()
            raise CannotPin(f"pinning another user's process needs CAP_SYS_NICE: {exc}") from None
        return self

    def __exit__(self, *_exc: object) -> None:
        os.sched_setaffinity(0, self.everything)
        for pid in self.among():
            now = affinity(pid)
            was = self.before.get(pid)
            if was is None and now in ({SHARED_CPU}, {RELAY_CPU}):
                was = self.everything  # born meanwhile, of a pinned parent
            if now is not None and was is not None and was != now:
                try:
                    _set(pid, was)
                except PermissionError:
                    pass  # nor could it have been pinned


def _set(pid: int, cpus: set[int]) -> None:
    try:
        os.sched_setaffinity(pid, cpus)
    except PermissionError:
        raise
    except OSError:  # gone meanwhile, or a per-CPU kernel thread (EINVAL)
        pass
