"""Relaying: two connections, once set up, copy to each other.

The forwarder (on the user's machine, under uvloop) ends a connection
here; the gate relays with splice.py, as the standard library's transports
cost it more than the copy. The transports are handed to two small
protocols that write what one side receives straight to the other: no
task, no read loop and no StreamReader per direction. With a task and a
stream per direction, the event loop's own machinery was most of the
forwarder's CPU under `ab -c50` (py-spy).

EOF is passed on as a half-close; a reset or any error on either side ends
both at once, so a client never waits for an answer from a side that is
gone.
"""

import asyncio
from typing import Callable, Optional, Tuple, cast

# How long a greeting (the gate's, splice.py) or a client's first bytes
# (the forwarder's, to go with the secret) wait to go out together with
# what follows. Two small writes in a row meet Nagle's algorithm somewhere
# along the SSH hops and the second waits for a delayed ACK: 40 ms per new
# connection here.
COALESCE = 0.05
# What a Held connection buffers before it stops reading: the owner's
# forwarder sends its secret and request in one write, well under this.
HELD_LIMIT = 256 * 1024

Count = Optional[Callable[[int], None]]


class Held(asyncio.Protocol):
    """A connection's protocol until a relay takes it over: it keeps what
    arrives and whether the peer ended. No StreamReader, no task: per new
    connection, the stream machinery and its tasks were most of both
    relays' CPU under `ab -c50` (py-spy). Subclasses read a handshake
    out of `buffer` first."""

    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.buffer = bytearray()
        self.eof = False
        self.gone = False  # connection_lost: closed, or reset (error)
        self.error: Optional[Exception] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= HELD_LIMIT and self.transport is not None:
            self.transport.pause_reading()  # the relay resumes it when it adopts us

    def eof_received(self) -> bool:
        self.eof = True
        return True  # half-closed: the other way may still carry

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.gone, self.error = True, exc

    def take(self) -> Tuple[bytes, bool, bool]:
        """(bytes kept, EOF seen, connection gone), emptying the buffer."""
        left = bytes(self.buffer)
        self.buffer.clear()
        return left, self.eof, self.gone


class _Side(asyncio.Protocol):
    """What one transport (src) receives goes to the other (dst)."""

    def __init__(self, pair: "_Pair", src: asyncio.Transport, dst: asyncio.Transport,
                 count: Count):
        self.pair, self.src, self.dst, self.count = pair, src, dst, count

    def adopt(self, left: bytes, eof: bool, gone: bool) -> None:
        """Take over src from the protocol that read the handshake, with
        the bytes it had read past it."""
        self.src.set_protocol(self)
        if left:
            self.data_received(left)
        if gone or self.src.is_closing():  # reset, or closed, already
            self.pair.end()
        elif eof:
            self.eof_received()
        elif self.dst.get_write_buffer_size() > self.dst.get_write_buffer_limits()[1]:
            # dst's pause_writing went to the protocol before us: hold src
            # until its resume_writing (which comes to our pair) says so.
            self.src.pause_reading()
        elif not self.src.is_reading():
            self.src.resume_reading()  # paused, full, before we took it over

    def data_received(self, data: bytes) -> None:
        if not self.dst.is_closing():
            self.dst.write(data)
        if self.count:
            self.count(len(data))

    def eof_received(self) -> bool:
        if not self.dst.is_closing() and self.dst.can_write_eof():
            self.dst.write_eof()
        self.pair.finished()
        return True  # src stays open for writing: the other way may still carry

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.pair.end()

    # src's own write buffer is full of what dst sent: stop reading dst.
    def pause_writing(self) -> None:
        self.dst.pause_reading()

    def resume_writing(self) -> None:
        if not self.dst.is_closing():
            self.dst.resume_reading()


class _Pair:
    def __init__(self, a: asyncio.Transport, b: asyncio.Transport):
        self.transports = (a, b)
        self.done = asyncio.get_running_loop().create_future()
        self.open = 2

    def finished(self) -> None:
        """One direction reached EOF; both: done."""
        self.open -= 1
        if self.open <= 0:
            self.end()

    def end(self) -> None:
        for transport in self.transports:
            transport.close()  # writes what is buffered, then closes
        if not self.done.done():
            self.done.set_result(None)


async def relay(a: Held, b: Held, counts: Tuple[Count, Count] = (None, None)) -> None:
    """Copy bytes both ways until both sides are done, then close both.
    counts: told of the bytes a->b and b->a. Cancelled, it closes both."""
    assert a.transport is not None and b.transport is not None  # connected
    # No TCP_NODELAY here: the loops set it on every TCP transport (see
    # listener.tcp_socket); setting it again was 3% of the forwarder's samples.
    ta, tb = a.transport, b.transport
    pair = _Pair(ta, tb)
    sides = (_Side(pair, ta, tb, counts[0]), _Side(pair, tb, ta, counts[1]))
    try:
        sides[0].adopt(*a.take())
        sides[1].adopt(*b.take())
        await pair.done
    finally:
        pair.end()
