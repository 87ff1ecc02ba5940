"""Client admission: every connection to the local port is carried to a
route (with replicas, the one with the fewest open), or held (up to
hold_seconds) while none is healthy, so a rollover looks like a slow
request, not an error. Until the gate acknowledges, a client's bytes are
kept: if the route fails first, they cannot have reached the server, and
go to another route at once, or to the same one after a pause.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

from remote_agent.joblog import Summariser
from remote_agent.limits import Budget, raise_nofile
from remote_agent.listener import Listener
from remote_agent.relay import COALESCE

from .connection import ClientGone, Connection
from .metrics import Metrics
from .route import Route

log = logging.getLogger("slurm_persist.clients")

# After a connection failed on a route, before trying again (the probe runs meanwhile).
RETRY_PAUSE = 0.5


class Clients:
    def __init__(self, hold_seconds: float, healthy: asyncio.Event,
                 pick: Callable[[set[Route]], Route | None], kick: Callable[[], None],
                 metrics: Metrics, events: Summariser):
        self.hold_seconds, self.healthy, self._pick = hold_seconds, healthy, pick
        self._kick, self.metrics, self.events = kick, metrics, events
        self.count = 0  # connections open now
        self.tasks: set = set()
        self.listeners: list[Listener] = []

    def listen(self, sockets: list[socket.socket]) -> None:
        """Accept on these (bound, listening) sockets, within the descriptor budget."""
        before, soft, hard = raise_nofile()
        budget = Budget.of_this_process()
        log.info("nofile_soft=%d->%d nofile_hard=%d connections_max=%d", before, soft, hard,
                 budget.connections)
        # A client costs two descriptors here (its socket, the ssh forward's).
        room = lambda: budget.room(2 * self.count)  # noqa: E731
        loop = asyncio.get_running_loop()

        async def take(conn: socket.socket) -> None:
            await loop.connect_accepted_socket(lambda: Connection(self.serve), conn)

        for sock in sockets:
            listener = Listener(sock, take, self.events, room)
            listener.start()
            self.listeners.append(listener)

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()

    def _left(self) -> None:
        """A descriptor came free: a listener paused on EMFILE may accept again."""
        for listener in self.listeners:
            listener.wake()

    async def serve(self, client: Connection) -> None:
        task = asyncio.current_task()
        self.tasks.add(task)  # a strong reference: asyncio keeps only a weak one
        self.count += 1
        self.metrics.connections.inc()
        self.metrics.open.inc()
        if not self.healthy.is_set():
            self.metrics.held.inc()
        try:
            await self._carry(client)
        finally:
            self.tasks.discard(task)
            self.count -= 1
            self.metrics.open.dec()
            self._left()

    async def _carry(self, client: Connection) -> None:
        deadline = time.monotonic() + self.hold_seconds
        await client.first_bytes(COALESCE)  # to send with the secret
        tried: set[Route] = set()
        while True:
            route = await self._wait_route(deadline, tried)
            if route is None:
                self.events.note(f"client=dropped reason=no-healthy-route-within-"
                                 f"{self.hold_seconds:.0f}s")
                self.metrics.failed.inc()
                client.close()
                return
            try:
                upstream, lane = await route.enter(client)
                break
            except ClientGone:  # a retry would send its request again, for nobody
                self.metrics.failed.inc()
                client.close()
                return
            except (OSError, asyncio.TimeoutError) as exc:
                # One failed connection is no verdict on the route: the probe
                # decides, at once; meanwhile new connections go elsewhere.
                log.debug("%s state=connection-retry error=%r", route.describe(),
                          str(exc) or type(exc).__name__)
                route.suspect = True
                tried.add(route)
                self._kick()
        self.metrics.up(len(client.sent))
        await route.carry(client, upstream, lane, (self.metrics.up, self.metrics.down))

    async def _wait_route(self, deadline: float, tried: set[Route]) -> Route | None:
        """A route not tried yet for this client; once all were, the same
        ones again after RETRY_PAUSE. None when the deadline passes first."""
        while True:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return None
            if not self.healthy.is_set():  # most often it is: no wait_for, no task
                try:
                    await asyncio.wait_for(self.healthy.wait(), timeout)
                except asyncio.TimeoutError:
                    return None
            route = self._pick(tried)
            if route is not None:
                return route
            if tried:
                await asyncio.sleep(min(RETRY_PAUSE, max(0.0, deadline - time.monotonic())))
                tried.clear()
            else:  # healthy, yet no route: the heartbeat is mid-switch
                await asyncio.sleep(0.05)
