"""The forwarder: 127.0.0.1:PORT, always open, always pointed at the live job.

The local port is bound once for the forwarder's whole life. Each client
connection is relayed to the current *route* (an endpoint record reached
through an OpenSSH forward, entered with the job's secret). Every heartbeat
the service is probed over HTTP through that same route; while it answers,
only the service dir's records are read (a later job serving means a
handover, or a current job SLURM failed), and SLURM is asked nothing. When
it fails, recovery tells apart:

- the tunnel died: rebuild it, on the next login node if this one is down;
- the job is gone: use the successor's record, or start a chain when SLURM
  says for certain that none exists;
- SLURM or the login nodes do not answer: wait. Unknown never resubmits.

While no route is healthy, new connections are held (up to hold_seconds)
instead of refused, so a rollover looks like a slow request, not an error.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import aiohttp

from remote_agent import slurm
from remote_agent.endpoint import Endpoint
from remote_agent.joblog import Summariser, flush_every

from . import sockets as local_sockets
from .clients import Clients
from .cluster import Chain
from .conditions import ChainStopped, Served, Starter
from .config import ConfigError, Options
from .handover import Handover
from .hooks import Announcer, Hooks
from .metrics import STATES, Metrics
from .paths import runtime_dir
from .refill import Refill
from .remote import Unreachable
from .route import Route
from .router import Router
from .status_file import StatusFile

log = logging.getLogger("slurm_persist.forwarder")

# While a running job does not serve yet: how often to read its record.
RECORD_POLL = 0.5


class NeverServed(Exception):
    """Before the first success: the service never became reachable.
    (Not a RuntimeError: recovery waits out those, and this must end it.)"""


class Forwarder:
    def __init__(self, options: Options, chain: Chain, supervisor: int = 0):
        self.options, self.chain = options, chain
        self.healthy = asyncio.Event()
        self._kick = asyncio.Event()
        self.router = Router(options, chain.site, runtime_dir(options.name), self._kick.set)
        self.events = Summariser(log.warning)
        self.served = Served()
        self._starting: set[str] = set()  # jobs whose records are read between looks
        self._served_by: dict[int, str] = {}  # slot -> the job it was last served by
        self.hooks = Hooks(options.on_event, options.name)
        self.starter = Starter(options, chain, self.served, self.hooks)
        self.conditions = self.starter.conditions
        self.metrics = Metrics(options.name)
        chain.on_slurm = self.metrics.slurm_calls.inc
        self.announce = Announcer(self.hooks, options.waiting_alert_seconds)
        self.handover = Handover(options, chain, self.hooks)
        self.refill = Refill(options, chain)
        self.status_file = StatusFile(options.name, options.local_port, supervisor, self.events)
        self.clients = Clients(options.hold_seconds, self.healthy, self.router.pick,
                               self._kick.set, self.metrics, self.events)
        self.status = self.status_file.status

    # -- lifecycle -------------------------------------------------------

    async def listen(self, sockets: list[socket.socket] | None = None) -> None:
        """Accept on sockets already listening (a supervisor's, systemd's), or
        bind the local port on loopback only; fails if it is taken."""
        self.clients.listen(sockets or local_sockets.bind(self.options.local_port,
                                                          self.options.local_socket))
        log.info("listen=%s state=open", self.options.address)
        if self.options.metrics_port:
            try:
                self.metrics.serve(self.options.metrics_port)
            except OSError as exc:
                raise ConfigError(f"metrics-port {self.options.metrics_port}: "
                                  f"{exc.strerror}") from None
            log.info("metrics=127.0.0.1:%d state=open", self.options.metrics_port)

    async def run(self) -> None:
        """Serve until cancelled; the local port never closes in between."""
        if not self.clients.listeners:
            await self.listen()
        flushing = asyncio.ensure_future(flush_every(self.events))
        try:
            await self.router.end_left_masters()
            # New connection per probe: a kept-alive one would hold a draining job open.
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as session:
                while True:
                    await self._heartbeat(session)
        finally:
            flushing.cancel()
            await self.close()

    async def close(self) -> None:
        self.clients.close()
        self.refill.close()
        await self.router.close()
        await self.hooks.close()
        self.metrics.close()
        if self.status.state != "stopped":
            self._set_status("stopped", "forwarder ended")

    # -- the loop --------------------------------------------------------

    async def _probe(self, route: Route, session: aiohttp.ClientSession) -> bool:
        started = time.monotonic()
        ok = await route.probe(session, self.options.health_path)
        self.metrics.probe.observe(time.monotonic() - started)
        return ok

    async def _heartbeat(self, session: aiohttp.ClientSession) -> None:
        routes = list(self.router.routes.values())
        answers = await asyncio.gather(*(self._probe(r, session) for r in routes))
        failed = [route for route, ok in zip(routes, answers, strict=True) if not ok]
        for route in routes:
            route.suspect = route.suspect and route in failed  # a good probe clears it
            if route in failed:
                self._drop(route)
        await self.router.check_paths(failed)
        first = self.router.route
        if first is not None:
            if not self.healthy.is_set():
                log.info("%s state=serving local=%s", first.describe(), self.options.address)
                self._set_status("serving")
            self.healthy.set()
            current = {slot: r.endpoint for slot, r in self.router.routes.items()}
            for target in await self.handover.later_serving(current, self.options.replicas):
                if target.slot in self.router.routes:  # a handover within the slot
                    await self._switch(target, session)
                else:
                    self.refill.adopt(target, lambda t: self._switch(t, session))
            await self.refill.look(len(self.router.routes))
            for route in list(self.router.routes.values()):
                await self.handover.warn_near_end(route.endpoint)
            await self._sleep(self.options.heartbeat_time)
            return
        self.healthy.clear()
        await self._recover(session)

    def _drop(self, route: Route) -> None:
        """Out at once, each, before the router asks their login nodes."""
        log.warning("%s state=probe-failed", route.describe())
        self.router.drop(route)
        if not self.router.routes:
            self.healthy.clear()

    async def _recover(self, session: aiohttp.ClientSession) -> None:
        self.served.attempts += 1
        self.announce.waiting(self.status.message)
        try:
            await self._recover_once(session)
        except (slurm.SlurmUnknown, Unreachable, RuntimeError) as exc:
            self._set_status("waiting", f"cluster unknown: {exc}")
            log.warning("slurm=unknown action=wait error=%r", str(exc)[:300])
        if not self.healthy.is_set():
            if self.served.ever or \
                    self.served.attempts < self.options.max_looks:
                return await self._pause(self.options.look_interval)
            raise NeverServed(f"no healthy endpoint after {self.served.attempts} attempts; "
                              f"see: slurm-persist logs --name {self.options.name}")

    async def _recover_once(self, session: aiohttp.ClientSession) -> None:
        jobs, snap = await asyncio.to_thread(lambda: (self.chain.jobs(), self.chain.snapshot()))
        if snap.chain.stopped:
            self._set_status("stopped", snap.chain.reason)
            log.error("service=%s state=chain-stopped reason=%r", self.options.name,
                      snap.chain.reason)
            self.hooks.emit("chain-stopped", reason=snap.chain.reason)
            raise ChainStopped(f"the chain is stopped: {snap.chain.reason}")
        serving = self.chain.serving(jobs, snap)
        if any([await self._switch(target, session) for slot, target in sorted(serving.items())
                if slot < self.options.replicas]):
            return
        if not jobs:
            await self._start_chain()
            return
        await self.refill.start_missing(jobs)
        self.router.prewarm()
        self._starting = self.handover.starting(jobs, snap)
        waiting = " ".join(f"job={j.job_id} state={j.state} node={j.node or '-'} reason={j.reason}"
                           for j in jobs)
        silent = [j for j in jobs if j.running and j.job_id not in snap.endpoints
                  and j.job_id not in snap.errors]
        if silent:  # a running job with no record: can it write one?
            problem = await asyncio.to_thread(self.conditions.home_problem)
            waiting = f"{problem}; {waiting}" if problem else waiting
        self._set_status("waiting", waiting)
        log.info("service=%s state=waiting %s", self.options.name, waiting)

    async def _start_chain(self) -> None:
        await self.starter.start(self._set_status)
        self._starting = {self.starter.started_job} if self.starter.started_job else set()

    async def _switch(self, target: Endpoint, session: aiohttp.ClientSession) -> bool:
        """Build a route to target and take it (for its slot) once it answers the probe."""
        route = await self.router.candidate(target, session)
        if route is None:
            return False
        self.router.take(route)
        # The slot's last job, not its route: a failed probe drops a route first.
        old = self._served_by.get(target.slot)
        self._served_by[target.slot] = target.job_id
        self.refill.served(target.slot)
        self.announce.served(old, target.job_id, target.node, route.tunnel.login)
        self.metrics.on_job(target.job_id, target.node, route.tunnel.login, target.ends_at)
        if old:
            self.metrics.switches.inc()
            self.status.switches += 1
        self.healthy.set()
        self.served.served()
        self.conditions.backoff.reset()
        self._set_status("serving")
        log.info("%s state=serving local=%s", route.describe(), self.options.address)
        return True

    async def _pause(self, seconds: float) -> None:
        """Between two looks at the cluster (handover.until_serving)."""
        await self.handover.until_serving(self._starting, seconds, self._sleep, RECORD_POLL)

    async def _sleep(self, seconds: float) -> None:
        """Up to seconds; a kick, also one while the heartbeat was busy, ends it."""
        try:
            await asyncio.wait_for(self._kick.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        self._kick.clear()

    def _set_status(self, state: str, message: str = "") -> None:
        if state in STATES:
            self.metrics.state.state(state)
        where = None
        route = self.router.route
        if route:
            e = route.endpoint
            where = (e.job_id, e.node, route.tunnel.login)
        self.status_file.set(state, message, where)
