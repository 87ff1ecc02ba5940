"""`up --daemonize`: a small supervisor that owns the local port.

Seen (#19): after kill -9 of the forwarder the port refused connections
(44 of 85 requests) until someone ran `up` again: a laptop asleep through
a crash, or an out-of-memory kill on a team's VM, left the API dead while
its chain ran on. Now the daemon binds the port once and runs the
forwarder as a forked worker that inherits the sockets. A worker that
dies is replaced at once with the same sockets, so clients queue in the
backlog meanwhile; one that dies again within FAST seconds is replaced
after a growing pause (0.2 s doubling to 30 s), so a bug cannot spin.
A worker that ends because there is nothing to follow (the chain
stopped; exit 2) or on SIGTERM (`down`) ends the supervisor too.

The supervisor is the process daemon.spawn() starts (this module as
`__main__` in a new interpreter), handed the options; SIGUSR1 to it writes
its worker's thread stacks to the log (service.foreground).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

from . import daemon, service
from . import sockets as local_sockets
from .config import ConfigError, Options
from .status_file import read_status
from .tasks import setup_logging

log = logging.getLogger("slurm_persist.supervisor")

FAST = 10.0
PAUSE_FIRST, PAUSE_MAX = 0.2, 30.0
# The worker's exit codes that mean "do not replace me".
FINAL = (0, 2)
# A worker still there this long after SIGTERM is killed. Seen: a thread
# stuck in OpenSSL kept the worker's loop from ending; `down` killed the
# supervisor after its 15 s, and the orphaned worker held the port and the
# lock, so every later `up` found "another up" and nothing served.
STOP_GRACE = 10.0

# How often an adopted worker, not a child to wait for, is looked at: the
# port's clients queue in the backlog for at most this long after it dies.
ADOPTED_LOOK = 0.5

Worker = Callable[[list[socket.socket]], int]


@dataclass(frozen=True)
class Adopted:
    """A worker already serving on the sockets, whose supervisor was killed
    (orphaned.py). Not our child: no waitpid, and no exit code to read."""
    pid: int
    service: str

    def wait(self) -> int:
        """0 once it ended as it meant to (its status says stopped: the
        chain stopped, or a SIGTERM); 1 if it died. A pid comes back only
        after the kernel has handed out pid_max others (32768 at the least),
        and it is looked at every ADOPTED_LOOK s."""
        while daemon.alive(self.pid):
            time.sleep(ADOPTED_LOOK)
        said = read_status(self.service)
        return 0 if said and said.pid == self.pid and said.state == "stopped" else 1


def supervise(sockets: list[socket.socket], worker: Worker, adopted: Adopted | None = None,
              ready: Callable[[], None] = lambda: None) -> int:
    """Run worker(sockets) in a child, again and again, until it ends for
    good; an adopted worker is waited for first, and replaced like any
    other. ready() runs once a SIGTERM would reach the worker (write the
    pid file there: `down` may signal at once)."""
    state = {"child": adopted.pid if adopted else 0, "stopping": False}

    def tell(signum: int) -> None:
        if state["child"]:
            with suppress(ProcessLookupError):  # it ended; waitpid is about to say so
                os.kill(state["child"], signum)

    def stop(signum, _frame) -> None:
        if not state["stopping"]:  # a second SIGTERM must not put the SIGKILL off
            signal.setitimer(signal.ITIMER_REAL, STOP_GRACE)  # then SIGALRM: SIGKILL
        state["stopping"] = True
        tell(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGALRM, lambda signum, _frame: tell(signal.SIGKILL))
    signal.signal(signal.SIGUSR1, lambda signum, _frame: tell(signal.SIGUSR1))
    ready()
    fast, restarts = 0, 0
    while adopted or not state["stopping"]:
        started = time.monotonic()
        waited, adopted = adopted, None
        pid = waited.pid if waited else os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os._exit(_run(worker, sockets))
        state["child"] = pid
        if state["stopping"]:  # the signal came between fork and here
            tell(signal.SIGTERM)
        log.info("supervisor=%d worker=%d state=%s restarts=%d", os.getpid(), pid,
                 "adopted" if waited else "started", restarts)
        code = waited.wait() if waited else os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        state["child"] = 0
        signal.setitimer(signal.ITIMER_REAL, 0)
        if state["stopping"] or code in FINAL:
            log.info("supervisor=%d worker=%d state=ended code=%d", os.getpid(), pid, code)
            return code if code in FINAL else 0
        fast = fast + 1 if time.monotonic() - started < FAST else 0
        pause = min(PAUSE_FIRST * 2 ** (fast - 1), PAUSE_MAX) if fast > 1 else 0.0
        restarts += 1
        log.warning("supervisor=%d worker=%d state=died code=%d restart_in=%.1fs", os.getpid(),
                    pid, code, pause)
        time.sleep(pause)  # a signal meanwhile sets stopping: the loop then ends
    return 0


def _run(worker: Worker, sockets: list[socket.socket]) -> int:
    try:
        return worker(sockets)
    except SystemExit as exc:
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # the log is the only place to say why
        log.error("worker=%d state=crashed error=%r", os.getpid(), exc)
        return 1


def main() -> int:
    """The daemon: own the port, keep a forwarder worker on it."""
    handed = json.loads(daemon.payload())
    options = Options(**handed["options"])
    setup_logging(options.debug, dated=True)
    adopted = Adopted(handed["worker"], options.name) if handed.get("worker") else None
    try:
        try:
            listening = (local_sockets.handed(handed.get("sockets", []))
                         or local_sockets.bind(options.local_port, options.local_socket))
        except OSError as exc:
            print(f"slurm-persist: error: {options.address}: {exc.strerror}", file=sys.stderr)
            return 1
        supervisor = os.getpid()
        return supervise(listening, lambda socks: _worker(options, socks, supervisor), adopted,
                         ready=lambda: daemon.write_pid(options.name))
    finally:
        daemon.clear_pid(options.name)


def _worker(options: Options, sockets: list[socket.socket], supervisor: int) -> int:
    try:
        return service.foreground(options, sockets, supervisor)
    except ConfigError as exc:  # nothing to follow: said once, not restarted
        log.error("slurm-persist: error: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
