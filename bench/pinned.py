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
back where it was when the run began. A child forked while its parent is
being pinned or put back takes the parent's mask of that moment, so both
directions repeat until a pass changes nothing; a thread born pinned gets
this process's own set. In the main thread, a SIGTERM or SIGHUP ends the
run through the same restore (one during the restore waits for its end).
A SIGKILL cannot: the pins would stay until each thread ends. Kernel
threads are left alone.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from .procs import comm, command, kernel_thread, pids, role

RELAYS = ("forwarder", "gate")
SHARED_CPU, RELAY_CPU = 0, 1
PASSES = 10  # at most; a pass only meets what was forked during the one before
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
    Any job's agent counts as a gate, as in the CPU accounting (procs.role).
    `unmovable`: threads the kernel would not move, or not put back, by name."""

    def __init__(self, forwarder: int, among: Callable[[], list[int]] = pids):
        self.forwarder, self.among = forwarder, among
        self.own = os.sched_getaffinity(0)
        self.before: dict[int, set[int]] = {}
        self.unmovable: set[str] = set()
        self._trapped: list[int] = []
        self._restoring = False
        self._deferred: set[int] = set()

    def _threads(self) -> dict[int, int]:
        """Each user thread, and the CPU it goes on."""
        where = {}
        for pid in self.among():
            if not kernel_thread(pid):
                cpu = RELAY_CPU if role(pid, command(pid), self.forwarder) in RELAYS else SHARED_CPU
                where.update(dict.fromkeys(threads(pid), cpu))
        return where

    def _remember(self, tids, born_pinned: bool) -> None:
        """Where each thread not seen yet was; one born pinned, of a parent
        pinned a moment before, was where this process was."""
        for tid in tids:
            if tid not in self.before and (mask := affinity(tid)) is not None:
                pinned = mask in ({SHARED_CPU}, {RELAY_CPU})
                self.before[tid] = self.own if born_pinned and pinned else mask

    def __enter__(self) -> Pinned:
        found = {role(pid, command(pid), self.forwarder) for pid in self.among()}
        if not set(RELAYS) <= found:
            raise CannotPin(f"found no {' and no '.join(sorted(set(RELAYS) - found))} "
                            f"(the forwarder's pid: {self.forwarder})")
        self._trap_signals()
        try:
            self._remember(self._threads(), born_pinned=False)  # before any pin
            os.sched_setaffinity(0, {SHARED_CPU})
            for _ in range(PASSES):
                where = self._threads()
                self._remember(where, born_pinned=True)
                moved = False
                for tid, cpu in where.items():  # every one: not any(), which stops at one
                    moved |= self._move(tid, {cpu}, restoring=False)
                if not moved:
                    break
        except PermissionError as exc:
            self.__exit__()
            raise CannotPin(f"the kernel refused a pin: {exc}") from None
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self._restoring = True  # a SIGTERM now waits until every thread is back
        try:
            os.sched_setaffinity(0, self.own)
            for _ in range(PASSES):
                tids = self._threads()
                self._remember(tids, born_pinned=True)
                moved = False
                for tid in tids:
                    was = self.before.get(tid)  # none: gone meanwhile
                    moved |= was is not None and self._move(tid, was, restoring=True)
                if not moved:
                    break
            else:
                self.unmovable.add(f"threads still being forked after {PASSES} passes")
        finally:
            self._untrap_signals()

    def _move(self, tid: int, cpus: set[int], restoring: bool) -> bool:
        """Put tid on cpus if it is not there; whether it moved."""
        now = affinity(tid)
        if now is None or now == cpus:
            return False
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # gone meanwhile
            return False
        except OSError as exc:
            if exc.errno != errno.EINVAL and not restoring:
                raise
            # EINVAL: an io_uring worker, say. Putting back, carry on with the rest.
            self.unmovable.add(f"{comm(tid) or tid} ({exc.strerror})")
            return False
        return True

    def _trap_signals(self) -> None:
        """SIGTERM and SIGHUP end the run through __exit__, where they would
        have killed it outright; a handler someone set (nohup's SIG_IGN, say)
        is kept. Only the main thread can set handlers: elsewhere a SIGTERM
        leaves the pins in place."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) is signal.SIG_DFL:
                    signal.signal(sig, self._on_signal)
                    self._trapped.append(sig)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self._restoring:
            self._deferred.add(signum)
        else:
            raise SystemExit(128 + signum)  # through __exit__, which puts every thread back

    def _untrap_signals(self) -> None:
        for sig in self._trapped:
            signal.signal(sig, signal.SIG_DFL)
        self._trapped.clear()
        if self._deferred:  # now that every thread is back; the bench's own cleanup runs
            raise SystemExit(128 + min(self._deferred))

