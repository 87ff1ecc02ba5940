"""Relaying: two connected streams, once set up, copy to each other.

The gate (in the job) and the forwarder (on the user's machine) both end
a connection here. Their transports are handed to two small protocols that
write what one side receives straight to the other: no task, no read loop
and no StreamReader per direction. With a task and a stream per direction,
the event loop's own machinery was most of the forwarder's CPU under
`ab -c50` (py-spy).

EOF is passed on as a half-close; a reset or any error on either side ends
both at once, so a client never waits for an answer from a side that is
gone.
"""

import asyncio
import socket
from typing import Callable, Optional, Tuple, cast

# How long a greeting waits to go out together with the first bytes. Two
# small writes in a row meet Nagle's algorithm somewhere along the SSH hops
# and the second waits for a delayed ACK: 40 ms per new connection here.
COALESCE = 0.05

Count = Optional[Callable[[int], None]]
Streams = Tuple[asyncio.StreamReader, asyncio.StreamWriter]


def nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # reset before we got here: the relay finds out and closes both
            pass


class _Side(asyncio.Protocol):
    """What one transport (src) receives goes to the other (dst)."""

    def __init__(self, pair: "_Pair", src: asyncio.Transport, dst: asyncio.Transport,
                 count: Count, greeting: bytes = b""):
        self.pair, self.src, self.dst, self.count = pair, src, dst, count
        self.greeting: Optional[bytes] = greeting or None
        self.timer: Optional[asyncio.TimerHandle] = None

    def adopt(self, reader: asyncio.StreamReader) -> None:
        """Take over src from the StreamReader that read the handshake,
        with the bytes it had read past it."""
        # Private, but the same two fields in every CPython from 3.8 to 3.13.
        buffered, eof = reader._buffer, reader._eof  # type: ignore[attr-defined]
        left, error = bytes(buffered), reader.exception()
        buffered.clear()
        self.src.set_protocol(self)
        if self.greeting is not None and not left and not eof and error is None:
            self.timer = asyncio.get_running_loop().call_later(COALESCE, self._greet)
        if left:
            self.data_received(left)
        if error is not None or self.src.is_closing():  # reset, or closed, already
            self.pair.end()
        elif eof:
            self.eof_received()
        elif not self.src.is_reading():
            self.src.resume_reading()  # the StreamReader had paused it, full

    def _greet(self, data: bytes = b"") -> None:
        if self.greeting is not None:
            data, self.greeting = self.greeting + data, None
            if self.timer is not None:
                self.timer.cancel()
        if data:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if not self.dst.is_closing():
            self.dst.write(data)

    def data_received(self, data: bytes) -> None:
        self._greet(data)
        if self.count:
            self.count(len(data))

    def eof_received(self) -> bool:
        self._greet()
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

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


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


async def relay(a: Streams, b: Streams, greeting: bytes = b"",
                counts: Tuple[Count, Count] = (None, None)) -> None:
    """Copy bytes both ways until both sides are done, then close both; send
    `greeting` to a before anything from b (in one write with b's first
    bytes if they come within COALESCE). counts: told of the bytes a->b
    and b->a. Cancelled, it closes both."""
    for _, writer in (a, b):
        nodelay(writer)
    ta, tb = (cast(asyncio.Transport, writer.transport) for _, writer in (a, b))
    pair = _Pair(ta, tb)
    sides = (_Side(pair, ta, tb, counts[0]), _Side(pair, tb, ta, counts[1], greeting))
    try:
        sides[0].adopt(a[0])
        sides[1].adopt(b[0])
        await pair.done
    finally:
        for side in sides:
            side.cancel()
        pair.end()
