"""Reverse mode: the job reaches out to a login node, not the other way.

For sites where login nodes cannot open connections to compute nodes, the
agent keeps ``ssh -T -R <socket>:<gate socket> <login node>`` running. The
socket is ``<service dir>/sockets/<job>-<n>.sock``: in the user's 0700
service directory, so no other user can connect to it, and in the shared
home, so the agent can clear a stale one (a login node's sshd does not
unlink a socket it left behind unless StreamLocalBindUnlink is set) and see
when the new one is there.

The key is the one deploy made for this purpose, accepted by the login
nodes only for forwarding; host keys are checked against the known_hosts
deploy wrote from what the login nodes themselves showed it. Login nodes
are tried in the spec's order at first; after a drop, the next one first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from .spec import Spec

log = logging.getLogger("slurm_persist.reverse")

CONNECT_TIMEOUT = 15
# How long ssh may take to log in and the socket to appear in the shared home.
APPEAR_TIMEOUT = 30.0
RETRY_MAX = 60.0
# Two sockets in a row that held for less than this: pause before the next.
FLAPPING = 30.0


class ReverseError(RuntimeError):
    """No login node would carry the job's socket."""


@dataclass(frozen=True)
class Hop:
    """The login node (by the laptop's name for it) holding our socket."""

    login: str
    socket: Path


def ssh_argv(spec: Spec, host: str, remote: Path, local: Path) -> List[str]:
    """No -N: a session (the key's forced command, which only waits for
    stdin to close) makes both ends set TCP_NODELAY. Without one, Nagle's
    algorithm held each new connection's channel-open behind the delayed
    ACK of the last one's close: 44 ms p50 per new connection, ~1 ms with."""
    return [
        "ssh", "-T", "-F", "/dev/null",
        "-i", spec.reverse_key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={spec.known_hosts}",
        "-o", "ExitOnForwardFailure=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
        "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
        "-R", f"{remote}:{local}", host,
    ]


class Reverse:
    def __init__(self, spec: Spec, job_id: str, gate_socket: Path,
                 say: Callable[..., None]):
        self.spec = spec
        self.job_id = job_id
        self.gate_socket = gate_socket
        self.say = say
        self.current: Optional[Hop] = None
        self._up = asyncio.Event()
        self._proc: Optional[asyncio.subprocess.Process] = None

    def socket_for(self, index: int) -> Path:
        return self.spec.sockets_dir / f"{self.job_id}-{index}.sock"

    async def wait_up(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def run(self, changed: Callable[[], None]) -> None:
        """Hold a socket on a login node that answers, for good; `changed`
        is called each time the socket moves."""
        if not self.spec.login_nodes:
            raise ReverseError("reverse mode, but the spec names no login node: deploy again")
        self.spec.sockets_dir.mkdir(mode=0o700, exist_ok=True)
        nodes = self.spec.login_nodes
        first, delay, was_short = 0, 5.0, False
        while True:
            for index in [(first + i) % len(nodes) for i in range(len(nodes))]:
                host, alias = nodes[index]
                began = time.monotonic()
                if await self._hold(host, Hop(alias, self.socket_for(index)), changed):
                    # Dropped: the next login node first, since this one may
                    # be down and waiting out its time-out is the gap.
                    first = (index + 1) % len(nodes)
                    break
            else:
                self.say("reverse=none-reachable retry_in=%.0fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = 5.0
            short = time.monotonic() - began < FLAPPING
            if short and was_short:
                await asyncio.sleep(delay)
            was_short = short

    async def _hold(self, host: str, hop: Hop, changed: Callable[[], None]) -> bool:
        """Run one ssh -R to host until it ends; True if the socket was up."""
        _unlink(hop.socket)
        # stdin stays open and silent: the forced command on the login node
        # ends when it closes, with this ssh or with the whole job.
        self._proc = proc = await asyncio.create_subprocess_exec(
            *ssh_argv(self.spec, host, hop.socket, self.gate_socket),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        assert proc.stderr is not None  # asked for with PIPE
        errors = asyncio.ensure_future(proc.stderr.read())
        try:
            if not await self._appeared(proc, hop.socket):
                why = (f"{hop.socket} did not appear within {APPEAR_TIMEOUT:.0f} s (is the home "
                       "directory shared with the login node?)" if proc.returncode is None
                       else _last_line(await errors))
                self.say("reverse=failed login=%s error=%r", host, why)
                return False
            self.current = hop
            self._up.set()
            changed()
            self.say("reverse=up login=%s socket=%s", host, hop.socket)
            await proc.wait()
            self.say("reverse=down login=%s code=%s error=%r", host, proc.returncode,
                     _last_line(await errors))
            return True
        finally:
            await _stop(proc, errors)
            _unlink(hop.socket)

    async def _appeared(self, proc: asyncio.subprocess.Process, path: Path) -> bool:
        deadline = time.monotonic() + APPEAR_TIMEOUT
        while time.monotonic() < deadline and proc.returncode is None:
            if path.is_socket():  # noqa: ASYNC240 - a stat of a local file, microseconds
                return True
            await asyncio.sleep(0.1)
        return False

    async def close(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            await self._proc.wait()
        if self.current is not None:
            _unlink(self.current.socket)


async def _stop(proc: asyncio.subprocess.Process, errors: asyncio.Future) -> bytes:
    if proc.returncode is None:
        proc.terminate()
        await proc.wait()
    return await errors


def _last_line(stderr: bytes) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no reason given"


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
