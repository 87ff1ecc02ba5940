"""The relays on a core of their own: a keep-alive run where the forwarder
and the gate have CPU 1 to themselves, and every other user thread of the
machine (OpenSSH, the server, Docker, the load tool, the sandbox's SLURM)
shares CPU 0.

On a site the forwarder runs on the laptop and the gate on a compute node,
each beside cores the SSH hops and the server do not use. On the 2-core
build machine they share both cores with everything else, and under
`wrk -c50` every path is CPU-bound, so that run weighs the relays' CPU
against OpenSSH's rather than their cost in time. This run keeps the
relays' CPU off the path's: both paths get one core for what they have in
common, and ours gets the second for its relays (the baseline leaves it
idle). What the relays start meanwhile (an ssh command) runs on theirs.

Affinity belongs to a thread, so every thread is pinned, and each is put
back. A child started while its parent is being pinned or put back takes
the parent's mask of that moment, so both directions repeat until a pass
changes nothing; a thread born meanwhile with a pinned mask gets this
process's own set back. A SIGTERM or SIGHUP ends the run through the same
restore. A SIGKILL cannot: the pins would stay until each thread ends.
Kernel threads are left alone.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from .procs import command, kernel_thread, pids, role

RELAYS = ("forwarder", "gate")
SHARED_CPU, RELAY_CPU = 0, 1
PASSES = 10  # until a pass changes nothing; forks between passes converge in 2-3
CAP_SYS_NICE = 23  # include/uapi/linux/capability.h


class CannotPin(Exception):
    """Fewer than two CPUs here, no right to pin every process, or no relay."""


def cannot_pin() -> str:
    """Why this process cannot pin the machine, or "" if it can."""
    cpus = os.sched_getaffinity(0)
    if not {SHARED_CPU, RELAY_CPU} <= cpus:
        return f"needs CPUs {SHARED_CPU} and {RELAY_CPU}; this process may use {sorted(cpus)}"
    status = Path("/proc/self/status").read_text()
    effective = int(next(line.split()[1] for line in status.splitlines()
                         if line.startswith("CapEff:")), 16)
    if not effective >> CAP_SYS_NICE & 1:
        return "pinning other users' processes needs CAP_SYS_NICE"
    return ""


def threads(pid: int) -> list[int]:
    try:
        return [int(entry) for entry in os.listdir(f"/proc/{pid}/task")]
    except OSError:  # gone meanwhile
        return []


def affinity(tid: int) -> set[int] | None:
    try:
        return os.sched_getaffinity(tid)
    except ProcessLookupError:  # gone meanwhile
        return None


class Pinned:
    """`with Pinned(forwarder):` the relays' threads on RELAY_CPU, every
    other user thread on SHARED_CPU, this one (so the load tool it starts)
    too. among: the processes to pin (all of the machine's by default).
    `unmovable`: threads the kernel would not move (EINVAL), by name."""

    def __init__(self, forwarder: int, among: Callable[[], list[int]] = pids):
        self.forwarder, self.among = forwarder, among
        self.own = os.sched_getaffinity(0)
        self.before: dict[int, set[int]] = {}
        self.unmovable: set[str] = set()
        self._handlers: dict[int, signal.Handlers | object] = {}
        self._deferred: list[int] = []

    def _threads(self) -> dict[int, int]:
        """Each user thread, and the CPU it goes on."""
        where = {}
        for pid in self.among():
            if not kernel_thread(pid):
                cpu = RELAY_CPU if role(pid, command(pid), self.forwarder) in RELAYS else SHARED_CPU
                where.update(dict.fromkeys(threads(pid), cpu))
        return where

    def __enter__(self) -> Pinned:
        self._trap_signals()
        try:
            os.sched_setaffinity(0, {SHARED_CPU})
            for _ in range(PASSES):
                where = self._threads()
                if not any([self._move(tid, {cpu}, keep=True) for tid, cpu in where.items()]):
                    break
            found = {role(pid, command(pid), self.forwarder) for pid in self.among()}
            if not set(RELAYS) <= found:
                raise CannotPin(f"found no {' and no '.join(sorted(set(RELAYS) - found))} "
                                f"(the forwarder's pid: {self.forwarder})")
        except PermissionError as exc:
            self.__exit__()
            raise CannotPin(f"pinning another user's process needs CAP_SYS_NICE: {exc}") from None
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig in self._handlers:  # not halfway through putting them back
            signal.signal(sig, self._defer)
        os.sched_setaffinity(0, self.own)
        try:
            for _ in range(PASSES):
                moved = False
                for tid in self._threads():
                    was = self.before.get(tid)
                    if was is None and affinity(tid) in ({SHARED_CPU}, {RELAY_CPU}):
                        was = self.own  # born meanwhile, of a pinned parent
                    if was is not None:
                        moved |= self._move(tid, was, keep=False)
                if not moved:
                    break
        finally:
            self._untrap_signals()

    def _move(self, tid: int, cpus: set[int], keep: bool) -> bool:
        """Put tid on cpus if it is not there; keep: remember where it was."""
        now = affinity(tid)
        if now is None or now == cpus:
            return False
        if keep:
            self.before.setdefault(tid, now)
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # gone meanwhile
            return False
        except PermissionError:
            if keep:
                raise
            self.unmovable.add(f"{_name(tid)} (left pinned: it changed user)")
            return False
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.unmovable.add(_name(tid))  # an io_uring worker, say
            return False
        return True

    def _trap_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                self._handlers[sig] = signal.signal(sig, _exit_on)

    def _defer(self, signum: int, _frame: object) -> None:
        self._deferred.append(signum)

    def _untrap_signals(self) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)  # type: ignore[arg-type]
        self._handlers.clear()
        for sig in self._deferred:  # now that every thread is back
            os.kill(os.getpid(), sig)
        self._deferred.clear()


def _exit_on(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # through __exit__, which puts every thread back


def _name(tid: int) -> str:
    try:
        return Path(f"/proc/{tid}/comm").read_text().strip()
    except OSError:
        return str(tid)
