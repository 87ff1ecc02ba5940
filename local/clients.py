"""Client admission: every connection to the local port is carried to the
current route, or held (up to hold_seconds) while none is healthy, so a
rollover looks like a slow request, not an error. Until the gate
acknowledges, a client's bytes are kept: if the route fails first, they
cannot have reached the server, and go to the next route.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from remote_agent.gate import CHUNK, COALESCE
from remote_agent.joblog import Summariser

from .metrics import Metrics
from .route import ClientGone, Route

log = logging.getLogger("slurm_persist.clients")

# After a connection failed on a route, before trying again (the probe runs meanwhile).
RETRY_PAUSE = 0.5


class Clients:
    def __init__(self, hold_seconds: float, healthy: asyncio.Event,
                 route: Callable[[], Route | None], kick: Callable[[], None],
                 metrics: Metrics, events: Summariser, left: Callable[[], None]):
        self.hold_seconds, self.healthy, self._route = hold_seconds, healthy, route
        self._kick, self.metrics, self.events, self._left = kick, metrics, events, left
        self.count = 0  # connections open now
        self.tasks: set = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.tasks.add(task)  # a strong reference: asyncio keeps only a weak one
        self.count += 1
        self.metrics.connections.inc()
        self.metrics.open.inc()
        if not self.healthy.is_set():
            self.metrics.held.inc()
        try:
            await self._carry(reader, writer)
        finally:
            self.tasks.discard(task)
            self.count -= 1
            self.metrics.open.dec()
            self._left()

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        deadline = time.monotonic() + self.hold_seconds
        try:  # most clients speak first: send their request with the secret
            sent = bytearray(await asyncio.wait_for(reader.read(CHUNK), COALESCE))
        except asyncio.TimeoutError:
            sent = bytearray()
        while True:
            route = await self._wait_route(deadline - time.monotonic())
            if route is None:
                self.events.note(f"client=dropped reason=no-healthy-route-within-"
                                 f"{self.hold_seconds:.0f}s")
                self.metrics.failed.inc()
                writer.close()
                return
            try:
                upstream, lane = await route.enter(reader, sent)
                break
            except ClientGone:  # a retry would send its request again, for nobody
                self.metrics.failed.inc()
                writer.close()
                return
            except (OSError, asyncio.TimeoutError) as exc:
                # One failed connection is no verdict on the route: let the
                # probe decide at once, and try again shortly.
                log.debug("%s state=connection-retry error=%r", route.describe(),
                          str(exc) or type(exc).__name__)
                self._kick()
                await asyncio.sleep(RETRY_PAUSE)
        self.metrics.up(len(sent))
        await route.carry((reader, writer), upstream, lane, (self.metrics.up, self.metrics.down))

    async def _wait_route(self, timeout: float) -> Route | None:
        if timeout <= 0:
            return None
        try:
            await asyncio.wait_for(self.healthy.wait(), timeout)
        except asyncio.TimeoutError:
            return None
        return self._route()
