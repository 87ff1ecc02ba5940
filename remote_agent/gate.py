"""The gate: the only way into a job's server.

A compute node is shared with other users, so the user's server listens on
a private socket and the gate stands in front of it: on the node's address
in direct mode, on a Unix socket that ssh -R carries to a login node in
reverse mode.
A connection must first send one line, ``SLURM-PERSIST/1 <secret>\\n``,
with the secret from this job's 0600 endpoint record. Once the gate has
reached the server it answers ``SLURM-PERSIST/1 OK\\n`` and from then on
relays bytes both ways, untouched. Anything else is closed before a byte
reaches the server. The acknowledgement lets the sender know that nothing
it sent before it can have reached the server when the connection fails
first, so it may safely try again elsewhere. The gate also counts open
connections, so a job can drain.

:func:`relay` is shared with the local forwarder, which speaks the other end.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
from typing import Awaitable, Callable, Optional, Set, Tuple

log = logging.getLogger("slurm_persist.gate")

MAGIC = b"SLURM-PERSIST/1 "
ACK = MAGIC + b"OK\n"
HANDSHAKE_TIMEOUT = 10.0
CHUNK = 256 * 1024
# A forwarder releases every held client at once after an outage.
BACKLOG = 1024
# How long a first write waits to go out together with the next bytes. Two
# small writes in a row meet Nagle's algorithm somewhere along the SSH hops
# and the second waits for a delayed ACK: 40 ms per new connection here.
COALESCE = 0.05


def preamble(secret: str) -> bytes:
    return MAGIC + secret.encode("ascii") + b"\n"


def nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                greeting: bytes = b"") -> bool:
    """Copy until EOF (passed on as a half-close: True) or an error (False).
    A greeting goes out first, in one write with the first bytes if they
    come within COALESCE."""
    try:
        if greeting:
            try:
                first = await asyncio.wait_for(reader.read(CHUNK), COALESCE)
            except asyncio.TimeoutError:
                first = b""
            writer.write(greeting + first)
            await writer.drain()
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        return True
    except (ConnectionError, OSError):
        return False


async def relay(a: Tuple[asyncio.StreamReader, asyncio.StreamWriter],
                b: Tuple[asyncio.StreamReader, asyncio.StreamWriter],
                greeting: bytes = b"") -> None:
    """Copy bytes both ways until both sides are done, then close both; send
    `greeting` to a before anything from b. A reset on either side ends both
    directions at once: a client must not wait forever for an answer from a
    side that is gone."""
    for _, writer in (a, b):
        nodelay(writer)
    pumps = [asyncio.ensure_future(_pump(a[0], b[1])),
             asyncio.ensure_future(_pump(b[0], a[1], greeting))]
    try:
        pending = set(pumps)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if not all(task.result() for task in done):
                break
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for _, writer in (a, b):
            writer.close()


Streams = Tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Gate:
    """Accepts on (host, port), checks the secret, relays to the server
    that open_upstream() connects to."""

    def __init__(self, secret: str, open_upstream: Callable[[], Awaitable[Streams]]):
        self._secret = preamble(secret)
        self._open_upstream = open_upstream
        self._server: Optional[asyncio.AbstractServer] = None
        self._active: Set[asyncio.Task] = set()
        self.rejected = 0

    @property
    def active(self) -> int:
        return len(self._active)

    async def start(self, host: str = "0.0.0.0", port: int = 0) -> int:
        """Bind (port 0: the kernel picks, so no bind-then-close race)."""
        self._server = await asyncio.start_server(self._accept, host, port, backlog=BACKLOG)
        return self._server.sockets[0].getsockname()[1]

    async def start_unix(self, path: str) -> None:
        """Listen on a Unix socket instead (reverse mode: ssh -R connects here)."""
        self._server = await asyncio.start_unix_server(self._accept, path, backlog=BACKLOG)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def drain(self, timeout: float) -> int:
        """Stop accepting; wait for open connections; return how many remain."""
        self.stop_accepting()
        if self._active:
            await asyncio.wait(set(self._active), timeout=timeout)
        return self.active

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._active.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._active.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            line = await asyncio.wait_for(reader.readline(), HANDSHAKE_TIMEOUT)
        except (asyncio.TimeoutError, ValueError, ConnectionError):
            line = b""
        if not hmac.compare_digest(line, self._secret):
            self.rejected += 1
            log.warning("gate=reject peer=%s reason=bad-secret", peer)
            writer.close()
            return
        try:
            upstream = await self._open_upstream()
        except OSError as exc:
            log.warning("gate=upstream-failed error=%s", exc)
            writer.close()
            return
        await relay((reader, writer), upstream, greeting=ACK)
