"""One client connection on the local port, before its relay: what it has
sent is kept until the gate acknowledges, so a route that fails first can
be given the same bytes again.

A protocol, not a stream: per connection, one task (its handler) and no
StreamReader, helper task or wait_for. With those, the event loop's own
machinery was most of the forwarder's CPU under `ab -c50` (py-spy).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from remote_agent.gate import ACK_TIMEOUT, Acknowledgement
from remote_agent.relay import Held

log = logging.getLogger("slurm_persist.clients")

# Client bytes kept for a retry until the gate acknowledges; past this, the
# client waits for the acknowledgement before sending more.
REPLAY_LIMIT = 1 << 20


class ClientGone(Exception):
    """The client went away before the gate acknowledged: nothing to retry.
    (Not an OSError: those mean the route failed, and are retried.)"""


class Connection(Held):
    """A client's connection; its handler runs as the one task it gets."""

    def __init__(self, handler: Callable[[Connection], Awaitable[None]]):
        super().__init__()
        self.handler = handler
        self.sent = bytearray()  # everything read from the client so far, for a replay
        self.upstream: Acknowledgement | None = None  # the route being entered
        self.task: asyncio.Future | None = None
        self._spoke: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.task = asyncio.ensure_future(self.handler(self))
        self.task.add_done_callback(self._handled)

    def _handled(self, task: asyncio.Future) -> None:
        """The handler ended (its relay closed the client already, unless it
        was cancelled or failed): the client is closed either way."""
        self.close()
        if not task.cancelled() and task.exception() is not None:
            log.error("client=failed error=%r", task.exception())

    def data_received(self, data: bytes) -> None:
        self.sent += data
        upstream = self.upstream
        # The route may have failed in this same pass (uvloop raises on a
        # write after close): the bytes are in `sent` for the retry.
        if upstream is not None and not upstream.gone:
            assert upstream.transport is not None  # connected before it is entered
            if not upstream.transport.is_closing():
                upstream.transport.write(data)
        if len(self.sent) >= REPLAY_LIMIT and self.transport is not None:
            self.transport.pause_reading()  # the relay resumes it after the ack
        self._wake()

    def eof_received(self) -> bool:
        super().eof_received()
        self._wake()
        return True  # passed on as a half-close once relayed

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._wake()
        if self.upstream is not None:
            self.upstream.fail(ClientGone(str(exc) if exc else "closed"))

    def _wake(self) -> None:
        if self._spoke is not None and not self._spoke.done():
            self._spoke.set_result(None)

    async def first_bytes(self, timeout: float) -> None:
        """Most clients speak first: wait up to timeout for their first
        bytes, so they go out with the secret in one write."""
        if self.sent or self.eof or self.gone:
            return
        loop = asyncio.get_running_loop()
        self._spoke = loop.create_future()
        timer = loop.call_later(timeout, self._wake)
        try:
            await self._spoke
        finally:
            timer.cancel()
            self._spoke = None

    async def enter(self, upstream: Acknowledgement, preamble: bytes) -> None:
        """Send the preamble and what the client sent so far on upstream, go
        on passing its bytes, and return once the gate acknowledges. Raises
        NotAcknowledged, TimeoutError or ClientGone, upstream closed."""
        assert upstream.transport is not None  # connected
        timer = asyncio.get_running_loop().call_later(
            ACK_TIMEOUT, upstream.fail, asyncio.TimeoutError("no acknowledgement from the gate"))
        try:
            self.check()
            upstream.transport.write(preamble + bytes(self.sent))
            self.upstream = upstream
            await upstream.acked
        except BaseException:
            # No ack: nobody else will close it, and what it still buffers
            # must not reach a gate we have given up on (abort, not close).
            upstream.transport.abort()
            raise
        finally:
            timer.cancel()
            self.upstream = None
            if not upstream.acked.done():
                upstream.acked.cancel()  # we were cancelled: nobody waits for it now

    def check(self) -> None:
        """ClientGone if the client has gone."""
        if self.gone:
            raise ClientGone(str(self.error) if self.error else "closed")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
