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

The local forwarder speaks the other end, and relays with the same
:mod:`relay`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Awaitable, Callable, Dict, Optional

from .admission import Admission
from .joblog import Summariser
from .limits import Budget
from .listener import Listener, tcp_socket, unix_socket
from .relay import Streams, relay

log = logging.getLogger("slurm_persist.gate")

MAGIC = b"SLURM-PERSIST/1 "
ACK = MAGIC + b"OK\n"
# How long a sender waits for the acknowledgement once its secret is sent.
ACK_TIMEOUT = 15.0
# The owner's forwarder sends the secret in its first write; only a slow
# path needs more than a round trip. Short, because a pending connection
# holds a descriptor for nothing.
HANDSHAKE_TIMEOUT = 5.0
CHUNK = 256 * 1024


def preamble(secret: str) -> bytes:
    return MAGIC + secret.encode("ascii") + b"\n"


class NotAcknowledged(ConnectionError):
    """The route failed before the gate confirmed the server: nothing sent
    so far reached the server, so the connection may be tried elsewhere."""


async def expect_ack(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     timeout: float = ACK_TIMEOUT) -> None:
    """The sender's half: wait for the gate's acknowledgement, or close."""
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (ValueError, asyncio.IncompleteReadError):
        line = b""
    if line != ACK:
        writer.close()
        raise NotAcknowledged(f"gate answered {line[:40]!r}" if line
                              else "closed before the gate answered")


class Gate:
    """Accepts on a port or a Unix socket, checks the secret, relays to
    the server that open_upstream() connects to. What it holds is bounded
    by its Admission (pending connections capped, a descriptor reserve)."""

    def __init__(self, secret: str, open_upstream: Callable[[], Awaitable[Streams]],
                 events: Optional[Summariser] = None, budget: Optional[Budget] = None):
        self._secret = preamble(secret)
        self._open_upstream = open_upstream
        self._events = events or Summariser(log.warning)
        self.admission = Admission(budget or Budget.of_this_process())
        self._listener: Optional[Listener] = None
        self._connections: Dict[asyncio.Task, asyncio.StreamWriter] = {}
        self.rejected = 0

    @property
    def active(self) -> int:
        return len(self._connections)

    async def start(self, host: str = "0.0.0.0", port: int = 0) -> int:
        """Bind (port 0: the kernel picks, so no bind-then-close race)."""
        listener = self._listen(tcp_socket(host, port))
        return listener.port

    async def start_unix(self, path: str) -> None:
        """Listen on a Unix socket instead (reverse mode: ssh -R connects here)."""
        self._listen(unix_socket(path))

    def _listen(self, sock) -> Listener:
        self._listener = Listener(sock, self._accept, self._events, self.admission.room)
        self._listener.start()
        return self._listener

    def stop_accepting(self) -> None:
        if self._listener is not None:
            self._listener.close()

    async def drain(self, timeout: float) -> int:
        """Stop accepting; wait for open connections; close the rest
        cleanly (each side gets a FIN, not a reset); return how many
        were still open."""
        self.stop_accepting()
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=timeout)
        left = list(self._connections)
        for task in left:
            task.cancel()  # relay() closes both of its sockets on the way out
        await asyncio.gather(*left, return_exceptions=True)
        return len(left)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a connection's handler runs as its own task
        peer = writer.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) else "local"
        self._connections[task] = writer
        for old in self.admission.arrive(task, host):
            self.rejected += 1
            self._events.note("gate=reject reason=pending-cap", f"peer={host}")
            self._connections[old].close()  # type: ignore[index]  # keys are our tasks
        try:
            await self._serve(task, reader, writer, host)
        finally:
            self._connections.pop(task, None)
            self.admission.leave(task)
            if self._listener is not None:
                self._listener.wake()

    async def _serve(self, task: asyncio.Task, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, host: str) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), HANDSHAKE_TIMEOUT)
        except (asyncio.TimeoutError, ValueError, ConnectionError):
            line = b""
        if not hmac.compare_digest(line, self._secret):
            if self.admission.is_pending(task):  # not already dropped for the cap
                self.rejected += 1
                reason = "bad-secret" if line else "no-secret"
                self._events.note(f"gate=reject reason={reason}", f"peer={host}")
            writer.close()
            return
        self.admission.authenticated(task)
        try:
            upstream = await self._open_upstream()
        except OSError as exc:
            self._events.note("gate=upstream-failed", f"error={exc}")
            writer.close()
            return
        await relay((reader, writer), upstream, greeting=ACK)
