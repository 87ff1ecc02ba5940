"""A route: one endpoint, reached through one login node, entered with the
job's secret; it owns its forwards (made when opened, cancelled on retire).

A route has one or more *lanes*, each an OpenSSH forward in its own ssh
master to the same login node. On the login node, one ssh session holds a
descriptor per channel and gets the user's soft limit: 1024 on the sandbox
and on many sites. Seen here: 1,018 channels wedged one session, and the
service accepted no new client. So once every lane carries LANE_CHANNELS
connections, the route opens another master and spreads new connections
over the lanes, fewest open first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from remote_agent.endpoint import Endpoint
from remote_agent.gate import Acknowledgement, NotAcknowledged, preamble
from remote_agent.relay import relay

from .connection import ClientGone, Connection
from .tunnel import Tunnel, TunnelError

log = logging.getLogger("slurm_persist.route")

PROBE_TIMEOUT = 10.0
ACK_SUSPECT = 1.0
# Connections being set up at once on one route. After an outage hundreds
# of held clients are released together; unbounded, they overflow listen
# backlogs along the way and fail each other.
SETUP_CONCURRENCY = 32
# Channels per ssh master before the route opens another: under 1024 with
# room for the session's own descriptors and for the connections set up
# while the next master starts (at 900, 9,500 clients at once had pushed a
# lane to 1,195 before the second master was up, 2 s later).
LANE_CHANNELS = 768
# ...and past this a connection waits for the next master instead: sshd
# holds a descriptor per channel and refuses channels near its 1024. With
# the jumphost's own master a lane takes longer to start, and 200 clients
# opening at once pushed a lane to 1,036: channels refused, the probe
# failed with them, and the route was dropped (the 9,500-connection test).
LANE_FULL = 960

Widen = Callable[[], Awaitable[Tunnel]]


class Lane:
    """One ssh master's forward to the endpoint, and what it carries."""

    def __init__(self, tunnel: Tunnel, socket_path: Path, own_tunnel: bool):
        self.tunnel, self.socket_path, self.own_tunnel = tunnel, socket_path, own_tunnel
        self.connections = 0

    async def close(self, remote: str) -> None:
        if self.tunnel.alive:
            await self.tunnel.cancel(self.socket_path, remote)
        if self.own_tunnel:
            await self.tunnel.close()


class Route:
    def __init__(self, endpoint: Endpoint, tunnel: Tunnel, socket_path: Path,
                 widen: Widen | None = None):
        self.endpoint = endpoint
        self.lanes = [Lane(tunnel, socket_path, own_tunnel=False)]
        self._widen = widen
        self._widening: asyncio.Future | None = None
        self._probe_server: asyncio.AbstractServer | None = None
        self._probes: set = set()
        self.probe_port = 0
        self.setup_slots = asyncio.Semaphore(SETUP_CONCURRENCY)
        self.idle = asyncio.Event()
        self.idle.set()
        # A connection failed on it since its last good probe: with replicas,
        # new connections go elsewhere until the probe clears it.
        self.suspect = False
        # Set when the route is dropped (its probe failed): connections still
        # waiting for the gate's ack give up and go to another route.
        self.abandoned = False
        self._entering: set[Acknowledgement] = set()

    @property
    def tunnel(self) -> Tunnel:
        """The first lane's: the login node's shared master."""
        return self.lanes[0].tunnel

    @property
    def connections(self) -> int:
        return sum(lane.connections for lane in self.lanes)

    async def enter(self, client: Connection):
        """Connect, present the secret with the client's first bytes, and
        wait for the gate's acknowledgement; (upstream, lane) once given."""
        lane = min(self.lanes, key=lambda each: each.connections)
        if lane.connections >= LANE_CHANNELS:
            self._widen_soon()
            if lane.connections >= LANE_FULL and self._widening is not None:
                await asyncio.wait({self._widening})  # not cancelled with us; never raises
                lane = min(self.lanes, key=lambda each: each.connections)
        lane.connections += 1
        self.idle.clear()
        # A gate acks in milliseconds; one that has not within ACK_SUSPECT
        # makes this route suspect, and new connections go to other replicas.
        # (A stopped node's address answers nothing for ~30 s: seen on the sandbox.)
        loop = asyncio.get_running_loop()
        slow = loop.call_later(ACK_SUSPECT, self._mark_suspect)
        try:
            async with self.setup_slots:
                if self.abandoned:
                    raise NotAcknowledged("route dropped")
                client.check()  # gone while held: no channel opened for nobody
                _, upstream = await loop.create_unix_connection(Acknowledgement,
                                                                str(lane.socket_path))
                self._entering.add(upstream)
                if self.abandoned:  # dropped while we connected
                    upstream.fail(NotAcknowledged("route dropped"))
                try:
                    await client.enter(upstream, preamble(self.endpoint.secret))
                finally:
                    self._entering.discard(upstream)
        except BaseException:
            self._left(lane)
            raise
        finally:
            slow.cancel()
        return upstream, lane

    def _mark_suspect(self) -> None:
        if not self.suspect:
            self.suspect = True
            log.debug("%s state=suspect reason=%r", self.describe(),
                        f"no ack within {ACK_SUSPECT:.0f} s")

    def abandon(self) -> None:
        """Dropped: connections waiting for an ack on it go elsewhere."""
        self.abandoned = True
        for upstream in list(self._entering):
            upstream.fail(NotAcknowledged("route dropped before the gate answered"))

    async def carry(self, client, upstream, lane: Lane, counts=(None, None)) -> None:
        """Relay one entered connection, counted so the route knows when it is
        idle; counts hear of the bytes each way (client to job, job to client)."""
        try:
            await relay(client, upstream, counts=counts)
        finally:
            self._left(lane)

    def _left(self, lane: Lane) -> None:
        lane.connections -= 1
        if not self.connections:
            self.idle.set()

    def _widen_soon(self) -> None:
        if self._widen is None or (self._widening is not None and not self._widening.done()):
            return
        self._widening = asyncio.ensure_future(self._add_lane())

    async def _add_lane(self) -> None:
        assert self._widen is not None  # only started when there is a way to widen
        try:
            tunnel = await self._widen()
        except TunnelError as exc:
            log.warning("%s lane=%d state=failed error=%r", self.describe(), len(self.lanes),
                        str(exc))
            return
        try:
            socket_path = await tunnel.forward(self.endpoint.remote)
        except BaseException as exc:  # cancelled too: a started master must not outlive us
            await tunnel.close()
            if not isinstance(exc, TunnelError):
                raise
            log.warning("%s lane=%d state=failed error=%r", self.describe(), len(self.lanes),
                        str(exc))
            return
        self.lanes.append(Lane(tunnel, socket_path, own_tunnel=True))
        log.info("%s lanes=%d connections=%d state=widened", self.describe(), len(self.lanes),
                 self.connections)

    async def retire(self) -> None:
        """After a switch (or a failed probe): once its last connection ends,
        drop this route's forwards, which the ssh masters would otherwise keep."""
        self.close()
        if self._widening is not None:
            self._widening.cancel()
        await self.idle.wait()
        for lane in self.lanes:
            await lane.close(self.endpoint.remote)

    async def start(self) -> None:
        """A private loopback port that enters this route, for aiohttp probes."""
        self._probe_server = await asyncio.get_running_loop().create_server(
            lambda: Connection(self._probe_client), "127.0.0.1", 0)
        self.probe_port = self._probe_server.sockets[0].getsockname()[1]

    async def _probe_client(self, client: Connection) -> None:
        # Held here: asyncio keeps only a weak reference to a task, and a
        # probe's was seen destroyed while pending ("Task was destroyed
        # but it is pending!") in a forwarder of the five-up test.
        task = asyncio.current_task()
        self._probes.add(task)
        try:
            try:
                upstream, lane = await self.enter(client)
            except (OSError, asyncio.TimeoutError, ClientGone):
                client.close()
                return
            await self.carry(client, upstream, lane)
        finally:
            self._probes.discard(task)

    async def probe(self, session: aiohttp.ClientSession, path: str) -> bool:
        url = f"http://127.0.0.1:{self.probe_port}{path}"
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)) as resp:
                await resp.read()
                return 200 <= resp.status < 300
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    def close(self) -> None:
        if self._probe_server is not None:
            self._probe_server.close()
        for task in list(self._probes):  # a probe connection is never worth waiting for
            task.cancel()

    async def close_own_tunnels(self) -> None:
        if self._widening is not None:
            self._widening.cancel()
        for lane in self.lanes:
            if lane.own_tunnel:
                await lane.tunnel.close()

    def describe(self) -> str:
        e = self.endpoint
        return f"job={e.job_id} node={e.node} login={self.tunnel.login}"
