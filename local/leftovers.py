"""What a forwarder killed without closing leaves on this machine: its ssh
masters, which nothing else ever ends.

A worker killed with -9 (or by the out-of-memory killer, or by the
watchdog's exit) skips closing its masters. Their stdin is /dev/null and
ServerAlive keeps them connected: on the sandbox, 2 (the jumphost's and
login1's) were still running, adopted by init, after the next worker
served. One forwarder owns a service's runtime directory (its lock), so
when it starts, or when `down` holds the lock, every master there is one
that was left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from . import daemon
from .config import Options
from .paths import runtime_dir
from .tunnel import CONTROL_PREFIX, TunnelError, ask_master, control_sockets, forward_sockets

log = logging.getLogger("slurm_persist.leftovers")

# An ssh master asked to exit is gone within milliseconds; one still
# running after this is signalled.
SETTLE = 2.0


async def end_left_masters(options: Options, directory: Path) -> int:
    """End what was left in directory: each control socket's master asked
    to exit (`ssh -O exit`), then any ssh process still naming a control
    socket there signalled (a master killed while it started has no socket
    yet, and a wedged one does not answer). Returns how many were ended."""
    controls, answered = _left_controls(directory), 0
    for control in controls:
        if await ask_master(options, control, "left-over", "exit") == 0:
            answered += 1
        control.unlink(missing_ok=True)  # noqa: ASYNC240 - a local socket file, microseconds
    strays = await _strays(directory)
    deadline = asyncio.get_running_loop().time() + (SETTLE if answered else 0)
    while strays and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
        strays = await _strays(directory)
    for pid in strays:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:  # it ended meanwhile
            pass
    if controls or strays:
        log.warning("runtime=%s left_sockets=%d left_masters=%d left_processes=%d state=ended",
                    directory, len(controls), answered, len(strays))
    return answered + len(strays)


def after_down(options: Options) -> int:
    """down's sweep, once no forwarder holds the service's lock (a
    forwarder killed whole, or by stop's SIGKILL). Never in down's way: a
    failure is logged."""
    if not daemon.hold_lock(options.name):
        return 0
    try:
        return asyncio.run(end_left_masters(options, runtime_dir(options.name)))
    except (OSError, TunnelError) as exc:
        log.warning("service=%s left_masters=unknown error=%r", options.name, str(exc))
        return 0


def _left_controls(directory: Path) -> list[Path]:
    """The control sockets in directory, once their forwards' are removed."""
    for sock in forward_sockets(directory):
        sock.unlink(missing_ok=True)
    return control_sockets(directory)


async def _strays(directory: Path) -> list[int]:
    """Our processes whose command line names a control socket in
    directory (`-S DIR/c...`): pgrep, where it is installed."""
    pattern = "-S " + "".join("\\" + c if c in ".[]()*+?{}|^$\\" else c
                              for c in f"{directory}/{CONTROL_PREFIX}")
    try:
        proc = await asyncio.create_subprocess_exec(
            "pgrep", "-u", str(os.getuid()), "-f", "--", pattern,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
    except FileNotFoundError:  # no procps: the sockets were all there is to go by
        return []
    out, _ = await proc.communicate()
    return [int(pid) for pid in out.split()]
