"""The routes to a service's jobs: one ssh master per login node, a route
built through the best of them to an endpoint and taken once it answers
its probe, and the route it replaces retired once its last connection ends.

One route per slot (remote_agent.slots): with replicas, new connections go
to the route with the fewest open, and a route that just failed a
connection (suspect) gets none while another one is clear.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from pathlib import Path

import aiohttp

from remote_agent.endpoint import Endpoint

from .config import Options
from .leftovers import end_left_masters
from .remote import Site
from .route import Route
from .tunnel import Tunnel, TunnelError, control_socket

log = logging.getLogger("slurm_persist.router")


class Router:
    def __init__(self, options: Options, site: Site, runtime: Path,
                 on_lost: Callable[[], None] = lambda: None):
        self.options, self.site, self.runtime = options, site, runtime
        self._on_lost = on_lost
        self.routes: dict[int, Route] = {}
        self._turn = 0
        # One master per login node and slot: sshd serves a session in one
        # process, and a replica whose node vanished stalled it (each channel
        # open waits on the resolver for the gone node's name), which took
        # the other replica's probe down with it (sandbox, node stopped).
        self._tunnels: dict[tuple[str, int], Tunnel] = {}
        self._retiring: set[asyncio.Future] = set()
        self._telling: set[asyncio.Future] = set()
        self._routes_retiring: set[Route] = set()
        self._extra_masters = 0
        self._starting: dict[tuple[str, int], asyncio.Future] = {}

    async def end_left_masters(self) -> None:
        """Before the first master: those a dead worker left (local.leftovers)."""
        await end_left_masters(self.options, self.runtime)

    async def candidate(self, target: Endpoint, session: aiohttp.ClientSession
                        ) -> Route | None:
        """A route to target that answers its probe, through the best login
        node that can carry it; None when none can."""
        for login in self.logins(target):
            try:
                tunnel = await self.tunnel(login, target.slot)
                route = Route(target, tunnel, await tunnel.forward(target.remote),
                              widen=functools.partial(self.extra_tunnel, login))
            except TunnelError as exc:
                log.warning("login=%s state=tunnel-failed error=%r", login, str(exc))
                self.site.failed(login)
                continue
            await route.start()
            if await route.probe(session, self.options.health_path):
                return route
            log.warning("%s state=not-answering", route.describe())
            # Retired in the background: its probe connection may hang on a
            # server that does not answer, and the heartbeat must go on.
            self._retire(route)
        return None

    @property
    def route(self) -> Route | None:
        """The lowest slot's route: the one status and logs name."""
        return self.routes[min(self.routes)] if self.routes else None

    def take(self, route: Route) -> None:
        """Make route its slot's current one; the one it replaces retires."""
        slot = route.endpoint.slot
        old = self.routes.get(slot)
        self.routes[slot] = route
        if old is not None:
            self._retire(old)

    def drop(self, route: Route) -> None:
        """A route that failed its probe: out at once, retired. Its clients
        still waiting for the gate's ack go to another replica, or are held
        until a route serves: left on it, 32 at a time for 15 s each, they
        waited for its ssh master's own end (sandbox, our sshd on login1
        frozen, the default heartbeat: requests held 36-40 s, though
        login2 served 20 s after the freeze)."""
        if self.routes.get(route.endpoint.slot) is route:
            del self.routes[route.endpoint.slot]
            route.abandon()
            self._retire(route)

    def pick(self, tried: set[Route]) -> Route | None:
        """Where a new connection goes: fewest open connections, among the
        routes not yet tried for it, clear ones before suspect ones."""
        left = [r for r in self.routes.values() if r not in tried]
        if not left:
            return None
        best = min((r.suspect, r.connections) for r in left)
        ties = [r for r in left if (r.suspect, r.connections) == best]
        # In turn among equals: short requests leave every route at 0 open
        # connections, and the first would get them all.
        self._turn += 1
        return ties[self._turn % len(ties)]

    def _retire(self, route: Route) -> None:
        """Once its last connection ends, its forwards go (route.retire)."""
        retiring = asyncio.ensure_future(route.retire())
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)
        self._routes_retiring.add(route)
        retiring.add_done_callback(lambda _: self._routes_retiring.discard(route))

    def logins(self, target: Endpoint) -> list[str]:
        """Login nodes to reach target through, best first. A reverse-mode
        socket exists on one login node only."""
        nodes = self.options.login_nodes
        if target.login_node is not None:
            if target.login_node in nodes:
                return [target.login_node]
            log.error("job=%s state=unreachable reason=%r", target.job_id,
                      f"its socket is on {target.login_node}, which is not one of this "
                      f"service's login nodes ({', '.join(nodes)}): deploy again")
            return []
        alive = [r.tunnel.login for r in self.routes.values() if r.tunnel.alive]
        current = alive[0] if alive else None
        order = self.site.order()
        return [current] + [n for n in order if n != current] if current else order

    async def tunnel(self, login: str, slot: int = 0) -> Tunnel:
        key = (login, slot)
        tunnel = self._tunnels.get(key)
        if tunnel is not None and tunnel.alive:
            return tunnel
        start = self._starting.get(key)
        if start is None:  # one start per master, whoever asks meanwhile
            start = self._starting[key] = asyncio.ensure_future(self._start(login, slot))
            start.add_done_callback(lambda _: self._starting.pop(key, None))
        return await asyncio.shield(start)

    async def _start(self, login: str, slot: int) -> Tunnel:
        old = self._tunnels.pop((login, slot), None)
        if old is not None:  # dead: what it started beside it (its jumphost master) goes too
            await old.close()
        # c0, c1 ... for slot 0 as before; slot k's from k * 100 on.
        index = slot * 100 + self.options.login_nodes.index(login)
        tunnel = Tunnel(self.options, login, control_socket(self.runtime, index), self._lost)
        await tunnel.start()
        self._tunnels[(login, slot)] = tunnel
        return tunnel

    def _lost(self, login: str) -> None:
        """A master to login ended on a connection error (its keep-alive
        gave up on a frozen sshd, say). The commands' connection there goes
        too: a record read caught on it waited out its 30 s bound, and the
        heartbeat behind it kept the dead route (sandbox, the freeze timed
        on a read: 31.0 and 31.3 s to login2; 7.5 and 7.7 s so). And the
        heartbeat looks at once."""
        telling = asyncio.ensure_future(self._site_lost(login))
        self._telling.add(telling)  # held: asyncio keeps only a weak reference
        telling.add_done_callback(self._telling.discard)
        self._on_lost()

    async def check_paths(self, failed: list[Route]) -> None:
        """After failed probes (the routes dropped already): did the path
        through a login node fail, or the job? A lost master says so; a
        live one is asked (Tunnel.answers), each at once. A frozen sshd
        keeps our master up for 3 keep-alives (30 s by default), and
        recovery went to login1 again, a command waiting 15 s there for a
        channel. A job that ended (scancel, its time limit) leaves the
        login node where it was."""
        await asyncio.gather(*(self._check(t) for t in {r.tunnel for r in failed}))

    async def _check(self, tunnel: Tunnel) -> None:
        if tunnel.lost:
            self.site.failed(tunnel.login)
        elif tunnel.alive and not await tunnel.answers():
            log.warning("tunnel=%s state=not-answering", tunnel.login)
            await self._site_lost(tunnel.login)

    async def _site_lost(self, login: str) -> None:
        # In a thread: closing a paramiko connection joins its transport's
        # thread, and the relays on this loop must not wait for that.
        await asyncio.to_thread(self.site.lost, login)

    def prewarm(self) -> None:
        """While a first job is on its way (no route yet): its login node's
        master, started now, is up when the job serves. Two masters with a
        jumphost took ~1 s on the sandbox, which the first answer waited
        for. A failure here is found again, and logged, when a route is built."""
        key = (self.site.order()[0], 0)
        known = self._tunnels.get(key)
        if self.routes or key in self._starting or (known is not None and known.alive):
            return
        warming = asyncio.ensure_future(self.tunnel(*key))
        warming.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def extra_tunnel(self, login: str) -> Tunnel:
        """Another ssh master to login, for a route whose lanes are full."""
        self._extra_masters += 1
        index = 10000 + self._extra_masters  # apart from the slots' c0, c1, c100 ...
        tunnel = Tunnel(self.options, login, control_socket(self.runtime, index), self._lost)
        try:
            await tunnel.start()
        except BaseException:  # cancelled with its route: no master left behind
            await tunnel.close()
            raise
        return tunnel

    async def close(self) -> None:
        for start in list(self._starting.values()):
            start.cancel()  # a master cancelled while it starts closes itself
        await asyncio.gather(*self._starting.values(), return_exceptions=True)
        routes = [*self.routes.values(), *self._routes_retiring]
        for retiring in self._retiring:
            retiring.cancel()
        for route in routes:
            route.close()
            await route.close_own_tunnels()  # the extra masters of its lanes
        for tunnel in self._tunnels.values():
            await tunnel.close()
