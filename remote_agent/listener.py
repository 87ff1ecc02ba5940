"""An accept loop that pauses instead of spinning.

asyncio's own servers, on Python 3.11 and older, log and retry every
accept() that fails with EMFILE up to `backlog` times per loop pass: on the
sandbox that was 660,835 log lines in 90 s and a dead agent. This loop
accepts only while its owner says there is room, and when the kernel still
says EMFILE/ENFILE it waits (0.05 s, doubling to 2 s) and says so once per
window through a Summariser. Connections wait in the kernel's backlog
meanwhile: slow, not refused. Shared by the agent's gate and the forwarder.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from typing import Awaitable, Callable, Optional

from .joblog import Summariser

# Out of descriptors or memory: wait, the condition is the process's or the system's.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# The client gave up between SYN and accept: nothing to do.
# accept(2): these network errors of a pending connection are to be retried as EAGAIN.
# (By name: ENONET is Linux's only, and the forwarder runs on laptops too.)
CLIENT_ERRNOS = frozenset(getattr(errno, name) for name in (
    "ECONNABORTED", "EPROTO", "EPERM", "EINTR", "ENETDOWN", "EHOSTUNREACH", "ENETUNREACH",
    "ENONET", "EHOSTDOWN", "ENOPROTOOPT", "EOPNOTSUPP") if hasattr(errno, name))
PAUSE_FIRST, PAUSE_MAX = 0.05, 2.0
# A forwarder releases every held client at once after an outage.
BACKLOG = 1024

# What becomes of an accepted socket: the gate's visitor, a forwarder's protocol.
Take = Callable[[socket.socket], Awaitable[None]]


def tcp_socket(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP by name, not 0: accepted sockets inherit it, and asyncio
    # turns Nagle off only on a socket whose proto says TCP (uvloop on all).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    options = [(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)]
    if family == socket.AF_INET6:
        options.append((socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1))
    return _listening(sock, (host, port), backlog, options)


def unix_socket(path: str, backlog: int = BACKLOG) -> socket.socket:
    return _listening(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), path, backlog, [])


def _listening(sock: socket.socket, address, backlog: int, options) -> socket.socket:
    """Bound, listening and non-blocking; closed if any step fails."""
    try:
        for option in options:
            sock.setsockopt(*option)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class Listener:
    """Accepts on sock while room() is true and hands each connection to take."""

    def __init__(self, sock: socket.socket, take: Take, events: Summariser,
                 room: Callable[[], bool] = lambda: True):
        self.sock, self._take, self._events, self._room = sock, take, events, room
        self._task: Optional[asyncio.Future] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wake = asyncio.Event()
        self.paused = 0

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.ensure_future(self._accept_loop())

    def wake(self) -> None:
        """A connection ended: there may be room again."""
        self._wake.set()

    def close(self) -> None:
        """Stop accepting; the connections already made are their handlers'."""
        if self._task is not None:
            self._task.cancel()
        # Python 3.8 leaves a cancelled sock_accept's reader registered: the
        # next socket given this number would never be read.
        if self._loop is not None and self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        pause = PAUSE_FIRST
        while True:
            if not self._room():
                self.paused += 1
                self._events.note("accept=paused reason=descriptor-reserve")
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as exc:
                if exc.errno in CLIENT_ERRNOS:
                    continue
                if exc.errno not in RESOURCE_ERRNOS:
                    raise
                self.paused += 1
                self._events.note(f"accept=paused error={errno.errorcode[exc.errno]}",
                                  f"retry_in={pause:.2f}s")
                await asyncio.sleep(pause)
                pause = min(pause * 2, PAUSE_MAX)
                continue
            pause = PAUSE_FIRST
            await self._connect(conn)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._take(conn)
        except OSError as exc:
            self._events.note("accept=failed", f"error={os.strerror(exc.errno or 0)}")
            conn.close()
