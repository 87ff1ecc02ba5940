"""The gate: the only way into a job's server.

A compute node is shared with other users, so the user's server listens on
a private socket and the gate stands in front of it: on the node's address
in direct mode, on a Unix socket that ssh -R carries to a login node in
reverse mode.
A connection must first send one line, ``SLURM-PERSIST/1 <secret>\\n``,
with the secret from this job's 0600 endpoint record. Once the gate has
reached the server it answers ``SLURM-PERSIST/1 OK\\n`` and from then on
relays bytes both ways, untouched. Anything else is closed before a byte
reaches the server. A sender whose connection fails before the
acknowledgement tries again elsewhere; one that failed after it does not.
The gate passes the first bytes on as it connects and acknowledges with
the server's first answer (splice.py), within 50 ms: a route lost inside
that window has delivered a request that is then sent again (the README
says so). The gate also counts open connections, so a job can drain.

The gate relays with :mod:`splice` (raw sockets on the standard event
loop); the local forwarder speaks the other end and relays with
:mod:`relay` (uvloop's transports).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
from typing import Awaitable, Callable, Optional, Set, cast

from .admission import Admission
from .joblog import Summariser
from .limits import Budget
from .listener import Listener, tcp_socket, unix_socket
from .relay import Held
from .splice import CHUNK, Splice, forget

log = logging.getLogger("slurm_persist.gate")

MAGIC = b"SLURM-PERSIST/1 "
ACK = MAGIC + b"OK\n"
# How long a sender waits for the acknowledgement once its secret is sent.
ACK_TIMEOUT = 15.0
# The owner's forwarder sends the secret in its first write; only a slow
# path needs more than a round trip. Short, because a pending connection
# holds a descriptor for nothing.
HANDSHAKE_TIMEOUT = 5.0


def preamble(secret: str) -> bytes:
    return MAGIC + secret.encode("ascii") + b"\n"


class NotAcknowledged(ConnectionError):
    """The route failed before the gate's acknowledgement arrived: the
    connection is tried elsewhere (its bytes reached the server only if
    the route failed within the gate's 50 ms wait, splice.py)."""


class Acknowledgement(Held):
    """The sender's half, as the protocol of its connection to the gate:
    `acked` resolves once the gate's line is read, or fails if the gate
    answered anything else or closed. Bytes after the line stay in `buffer`
    for the relay."""

    def __init__(self) -> None:
        super().__init__()
        self.acked = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.acked.done():
            return
        if self.buffer.startswith(ACK):
            del self.buffer[:len(ACK)]
            self.acked.set_result(None)
        elif not ACK.startswith(bytes(self.buffer)):
            self.fail(NotAcknowledged(f"gate answered {bytes(self.buffer[:40])!r}"))

    def eof_received(self) -> bool:
        super().eof_received()
        self.fail(NotAcknowledged("closed before the gate answered"))
        return True

    def connection_lost(self, exc: Optional[Exception]) -> None:
        super().connection_lost(exc)
        self.fail(NotAcknowledged("closed before the gate answered"))

    def fail(self, error: BaseException) -> None:
        if not self.acked.done():
            self.acked.set_exception(error)


class Gate:
    """Accepts on a port or a Unix socket, checks the secret, relays to
    the server that open_upstream() connects to (a connected non-blocking
    socket). What it holds is bounded by its Admission (pending
    connections capped, a descriptor reserve)."""

    def __init__(self, secret: str, open_upstream: Callable[[], Awaitable[socket.socket]],
                 events: Optional[Summariser] = None, budget: Optional[Budget] = None):
        self.secret = preamble(secret)
        self.open_upstream = open_upstream
        self.events = events or Summariser(log.warning)
        self.admission = Admission(budget or Budget.of_this_process())
        self._listener: Optional[Listener] = None
        self.connections: Set[_Visitor] = set()
        self.rejected = 0

    @property
    def active(self) -> int:
        return len(self.connections)

    async def start(self, host: str = "0.0.0.0", port: int = 0) -> int:
        """Bind (port 0: the kernel picks, so no bind-then-close race)."""
        listener = self._listen(tcp_socket(host, port))
        return listener.port

    async def start_unix(self, path: str) -> None:
        """Listen on a Unix socket instead (reverse mode: ssh -R connects here)."""
        self._listen(unix_socket(path))

    def _listen(self, sock) -> Listener:
        self._listener = Listener(sock, self._take, self.events, self.admission.room)
        self._listener.start()
        return self._listener

    async def _take(self, sock: socket.socket) -> None:
        _Visitor(self, sock)

    def stop_accepting(self) -> None:
        if self._listener is not None:
            self._listener.close()

    async def drain(self, timeout: float) -> int:
        """Stop accepting; wait for open connections; close the rest
        cleanly (each side gets a FIN, not a reset); return how many
        were still open."""
        self.stop_accepting()
        if self.connections:
            await asyncio.wait({each.finished for each in self.connections}, timeout=timeout)
        left = list(self.connections)
        for each in left:
            each.end()
        await asyncio.gather(*(each.finished for each in left), return_exceptions=True)
        return len(left)

    def reject(self, visitor: _Visitor, reason: str) -> None:
        if self.admission.is_pending(visitor):  # not already dropped for the cap
            self.rejected += 1
            self.events.note(f"gate=reject reason={reason}", f"peer={visitor.host}")

    def left(self, visitor: _Visitor) -> None:
        self.connections.discard(visitor)
        self.admission.leave(visitor)
        if self._listener is not None:
            self._listener.wake()


class _Visitor:
    """One connection to the gate: pending until its first line shows the
    secret, then relayed by one task. No task before that, so a flood of
    connections that never show it costs a reader callback each."""

    def __init__(self, gate: Gate, sock: socket.socket):
        peer = sock.getpeername()  # before anything is registered: it may raise
        self.host = peer[0] if isinstance(peer, tuple) else "local"
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Off: an answer in pieces must not wait for a delayed ACK (40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.gate, self.sock = gate, sock
        self.buffer = bytearray()
        self.authentic = False
        self.task: Optional[asyncio.Task] = None
        self.splice: Optional[Splice] = None
        loop = asyncio.get_running_loop()
        self.finished = loop.create_future()
        gate.connections.add(self)
        for old in gate.admission.arrive(self, self.host):
            gate.rejected += 1
            gate.events.note("gate=reject reason=pending-cap", f"peer={self.host}")
            cast(_Visitor, old).close()
        loop.add_reader(sock.fileno(), self._readable)
        self._timer: Optional[asyncio.TimerHandle] = loop.call_later(HANDSHAKE_TIMEOUT,
                                                                      self._refuse)

    def _readable(self) -> None:
        try:
            data = self.sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # ended, or reset, before the secret
            self._refuse()
            return
        self.buffer += data
        secret = self.gate.secret
        end = self.buffer.find(b"\n", 0, len(secret))
        if end < 0:
            if len(self.buffer) >= len(secret):
                self._refuse()
            return
        if not hmac.compare_digest(bytes(self.buffer[:end + 1]), secret):
            self._refuse()
            return
        del self.buffer[:end + 1]
        self.authentic = True
        self._cancel_timer()
        # What comes next stays in the kernel until the relay reads it.
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.gate.admission.authenticated(self)
        self.task = asyncio.ensure_future(self._relay())

    def _refuse(self) -> None:
        """No secret, or a wrong one, within HANDSHAKE_TIMEOUT: closed
        before a byte reaches the server."""
        if not self.authentic and not self.finished.done():
            self.gate.reject(self, "bad-secret" if self.buffer else "no-secret")
            self.close()

    async def _relay(self) -> None:
        try:
            try:
                upstream = await self.gate.open_upstream()
            except OSError as exc:
                self.gate.events.note("gate=upstream-failed", f"error={exc}")
                return
            self.splice = Splice(self.sock, upstream, greeting=ACK, first=bytes(self.buffer))
            self.buffer.clear()
            await asyncio.shield(self.splice.done)  # a drain's cancel must reach close()
        finally:
            if self.splice is not None:
                self.splice.close()  # done already, unless we were cancelled
            else:
                self.sock.close()  # the server was not reached
            self._leave()

    def end(self) -> None:
        """Drained: a relay closes both of its sockets on the way out."""
        if self.task is not None:
            self.task.cancel()
        else:
            self.close()

    def close(self) -> None:
        """A pending connection: closed, and gone from the gate's books."""
        forget(asyncio.get_running_loop(), self.sock)
        self._leave()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _leave(self) -> None:
        self._cancel_timer()
        if not self.finished.done():
            self.gate.left(self)
            self.finished.set_result(None)
