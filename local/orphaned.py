"""A daemon's worker whose supervisor was killed (kill -9, the OOM killer).

The worker serves on: it holds the port's sockets and the lock. But a
worker that died then would have no one to replace it, and the port would
refuse connections until someone ran `up` again, the fault #19 was about.
So the orphaned worker starts a new supervisor (daemon.spawn: a new
interpreter, not a fork of this one), handing it the port's sockets and
the lock. The new supervisor watches this worker and, once it ends,
starts the next one on the same sockets, as the killed one would have.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os

from . import daemon
from .config import Options
from .status_file import StatusFile

log = logging.getLogger("slurm_persist.orphaned")

# A new supervisor still running this long after its start took the
# worker on (it adopts it within a second); one gone sooner would die so
# again, and the worker stops starting them.
FAST = 10.0


def handing(options: Options, sockets=(), worker: int = 0) -> str:
    """What the daemon (supervisor.main) is handed: the options; for the
    new supervisor of an orphaned worker, also the worker's pid and the
    descriptors of the port's sockets it serves on."""
    return json.dumps({"options": dataclasses.asdict(options), "worker": worker,
                       "sockets": [sock.fileno() for sock in sockets]})


async def watch(options: Options, sockets, supervisor: int, status: StatusFile,
                stopping: asyncio.Event) -> None:
    """Each time this worker's supervisor is gone, start a new one; not
    once the worker stops (a supervisor killed while it ends would start
    it again). If none can start, or one dies within FAST s of its start,
    the worker writes its own pid, so that `status` sees it and `down`
    stops it, and watches no more: a new one would die the same way."""
    while True:
        # No event tells of another process gone: looked at each second.
        while daemon.alive(supervisor) and not stopping.is_set():  # noqa: ASYNC110
            await asyncio.sleep(1)
        if stopping.is_set():
            return
        gone = supervisor
        try:
            supervisor = daemon.spawn(options.name, "local.supervisor",
                                      handing(options, sockets, os.getpid()),
                                      keep=tuple(sock.fileno() for sock in sockets))
        except (OSError, RuntimeError) as exc:
            _alone(options, gone, f"cannot start one: {exc}")
            return
        status.supervised_by(supervisor)
        log.warning("service=%s supervisor=%d state=gone worker=%d new_supervisor=%d",
                    options.name, gone, os.getpid(), supervisor)
        await asyncio.sleep(FAST)
        if not daemon.alive(supervisor) and not stopping.is_set():
            _alone(options, supervisor, f"it died within {FAST:.0f} s")
            return


def _alone(options: Options, gone: int, why: str) -> None:
    daemon.write_pid(options.name)
    log.warning("service=%s supervisor=%d state=gone worker=%d state=adopted-pid-file "
                "reason=%r", options.name, gone, os.getpid(), why)
