"""The gate's relay: two non-blocking sockets copied to each other from the
event loop's reader and writer callbacks, with no transport or protocol.

The agent runs on the standard library's event loop, where a transport
and its protocol cost more Python than the copy itself. Per new
connection under 50 concurrent clients, the gate spent 126 us of user CPU
with transports and 48-65 us with this (a gate alone on loopback, 3 x
5,000 connections each). The forwarder keeps relay.py: uvloop's
transports are C.

Each direction stops reading while the other side has not taken what it
was given, so memory is bounded by one read per direction. EOF is passed
on as a half-close; a reset or any error on either side closes both.

The greeting (the gate's acknowledgement) tells a's sender that its bytes
may have reached b, so that it must not send them anywhere else. It waits
up to COALESCE to go out with b's first answer, but b is given a's bytes
at once: so when b fails inside that wait after taking some of them, the
greeting still goes before a is closed. Without it, a request that made
the server crash was sent on to the other replica, and crashed it too.
"""

import asyncio
import socket
from typing import Optional

from .relay import COALESCE

CHUNK = 256 * 1024


def forget(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Out of the loop, then closed. In this order: a selector still holding
    a closed descriptor would trip over the next socket given its number."""
    if sock.fileno() >= 0:
        loop.remove_reader(sock.fileno())
        loop.remove_writer(sock.fileno())
        sock.close()


class _Way:
    """One direction: what src receives goes to dst."""

    __slots__ = ("src", "dst", "pending", "eof", "shut")

    def __init__(self, src: socket.socket, dst: socket.socket):
        self.src, self.dst = src, dst
        self.pending = bytearray()  # read from src, not yet taken by dst
        self.eof = False  # src has ended
        self.shut = False  # ...and dst has been told (a half-close)


class Splice:
    """Relays a and b until both directions end or one fails; `done` then
    resolves, and both sockets are closed. `first` (bytes already read
    from a) goes to b at once; `greeting` goes to a before anything from
    b, in one write with b's first bytes if they come within COALESCE."""

    def __init__(self, a: socket.socket, b: socket.socket, greeting: bytes = b"",
                 first: bytes = b""):
        self.loop = asyncio.get_running_loop()
        self.done = self.loop.create_future()
        self._closed = False
        self._ways = (_Way(a, b), _Way(b, a))
        self._greeting = greeting
        self._delivered = False  # b has taken bytes from a
        self._timer: Optional[asyncio.TimerHandle] = None
        if greeting:
            self._timer = self.loop.call_later(COALESCE, self._greet)
        for way in self._ways:
            self.loop.add_reader(way.src.fileno(), self._readable, way)
        if first:
            self._send(self._ways[0], first)

    def _greet(self) -> None:
        self._timer = None
        if self._greeting and not self._closed:
            self._send(self._ways[1], b"")

    def _readable(self, way: _Way) -> None:
        try:
            data = way.src.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if data:
            self._send(way, data)
            return
        way.eof = True
        self.loop.remove_reader(way.src.fileno())
        if way is self._ways[1] and self._greeting:
            self._send(way, b"")  # b ended without a byte: the greeting still goes
        if not way.pending:
            self._shut(way)

    def _send(self, way: _Way, data: bytes) -> None:
        if way is self._ways[1] and self._greeting:
            data, self._greeting = self._greeting + data, b""
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if not data:
            return
        if way.pending:  # only the greeting comes here then; it keeps the order
            way.pending += data
            return
        try:
            sent = way.dst.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        if sent and way is self._ways[0]:
            self._delivered = True
        if sent < len(data):
            # dst is full: hold src until dst has taken the rest.
            way.pending += data[sent:]
            if not way.eof:
                self.loop.remove_reader(way.src.fileno())
            self.loop.add_writer(way.dst.fileno(), self._writable, way)

    def _writable(self, way: _Way) -> None:
        try:
            sent = way.dst.send(way.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        del way.pending[:sent]
        if sent and way is self._ways[0]:
            self._delivered = True
        if way.pending:
            return
        self.loop.remove_writer(way.dst.fileno())
        if way.eof:
            self._shut(way)
        else:
            self.loop.add_reader(way.src.fileno(), self._readable, way)

    def _shut(self, way: _Way) -> None:
        way.shut = True
        try:
            way.dst.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        if all(each.shut for each in self._ways):
            self.close()

    def close(self) -> None:
        """Both sockets closed (what they still had to send is dropped, but
        a greeting owed for bytes b has taken goes first)."""
        if self._closed:  # not done.done(): a cancelled waiter cancels done too
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._greeting and self._delivered:
            self._owe()
        for way in self._ways:
            forget(self.loop, way.src)
        if not self.done.done():
            self.done.set_result(None)

    def _owe(self) -> None:
        """The greeting, then a FIN, to a: nothing went to a before the
        greeting, so its send buffer is empty and 19 bytes fit."""
        a = self._ways[0].src
        try:
            a.send(self._greeting)
            a.shutdown(socket.SHUT_WR)
        except OSError:  # a failed as well: there is nobody left to tell
            pass
        self._greeting = b""
