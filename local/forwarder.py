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
import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from typing import Optional

import aiohttp

from remote_agent import slurm
from remote_agent.endpoint import Endpoint
from remote_agent.gate import CHUNK, COALESCE
from remote_agent.joblog import Summariser, flush_every
from remote_agent.limits import Budget, raise_nofile
from remote_agent.listener import Listener

from . import sockets as local_sockets
from .cluster import Chain
from .hooks import Hooks
from .metrics import STATES, Metrics
from .conditions import Conditions, Verdict
from .config import Options, state_dir
from .remote import Unreachable
from .route import Route, remote_of
from .tunnel import Tunnel, TunnelError, runtime_dir

log = logging.getLogger("slurm_persist.forwarder")



class NeverServed(Exception):
    """Before the first success: the service never became reachable.
    (Not a RuntimeError: recovery waits out those, and this must end it.)"""


class ChainStopped(Exception):
    """The chain was stopped (by down or the crash-loop guard): nothing to follow."""


@dataclass
class Status:
    """What `status` shows about a running forwarder (status.json)."""

    pid: int
    service: str
    local_port: int
    state: str = "starting"
    job_id: str = ""
    node: str = ""
    login: str = ""
    since: float = 0.0
    switches: int = 0
    message: str = ""
    supervisor: int = 0  # the daemon that restarts this forwarder, if any


class Forwarder:
    def __init__(self, options: Options, chain: Chain, supervisor: int = 0):
        self.options = options
        self.chain = chain
        self.route: Optional[Route] = None
        self.healthy = asyncio.Event()
        self._kick = asyncio.Event()
        self._tunnels: dict[str, Tunnel] = {}
        self._runtime = runtime_dir(options.name)
        self._listeners: list[Listener] = []
        self.events = Summariser(log.warning)
        self._clients = 0
        self._retiring: set[asyncio.Future] = set()
        self._extra_masters = 0
        # Newer records that said serving for a job SLURM did not run: not asked again.
        self._not_running: set[str] = set()
        self.attempts = 0
        self.ever_served = False
        # Chains that ended without serving, in a row, and the last one started here.
        self.unserved_chains = 0
        self._served_since_start = False
        self._started_job: Optional[str] = None
        self.conditions = Conditions(chain)
        self.hooks = Hooks(options.on_event, options.name)
        self.metrics = Metrics(options.name)
        chain.on_slurm = self.metrics.slurm_calls.inc
        self._waiting_since: Optional[float] = None  # no route since then
        self._told_near_end: set[str] = set()
        self.status = Status(os.getpid(), options.name, options.local_port, since=time.time(),
                             supervisor=supervisor)
        self._status_path = state_dir(options.name) / "status.json"

    # -- lifecycle -------------------------------------------------------

    async def listen(self, sockets: Optional[list[socket.socket]] = None) -> None:
        """Accept on sockets already listening (a supervisor's, systemd's), or
        bind the local port on loopback only; fails if it is taken."""
        before, soft, hard = raise_nofile()
        budget = Budget.of_this_process()
        log.info("nofile_soft=%d->%d nofile_hard=%d connections_max=%d", before, soft, hard,
                 budget.connections)
        port = self.options.local_port
        sockets = sockets or local_sockets.bind(port)
        # A client costs two descriptors here (its socket, the ssh forward's).
        room = lambda: budget.room(2 * self._clients)  # noqa: E731
        for sock in sockets:
            listener = Listener(sock, self._client, self.events, room)
            listener.start()
            self._listeners.append(listener)
        log.info("listen=127.0.0.1 port=%d state=open", port)
        if self.options.metrics_port:
            self.metrics.serve(self.options.metrics_port)
            log.info("metrics=127.0.0.1:%d state=open", self.options.metrics_port)

    async def run(self) -> None:
        """Serve until cancelled; the local port never closes in between."""
        if not self._listeners:
            await self.listen()
        flushing = asyncio.ensure_future(flush_every(self.events))
        try:
            # New connection per probe: a kept-alive one would hold a draining job open.
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as session:
                while True:
                    await self._heartbeat(session)
        finally:
            flushing.cancel()
            await self.close()

    async def close(self) -> None:
        for listener in self._listeners:
            listener.close()
        if self.route:
            self.route.close()
        for retiring in self._retiring:
            retiring.cancel()
        for tunnel in self._tunnels.values():
            await tunnel.close()
        await self.hooks.close()
        self.metrics.close()
        if self.status.state != "stopped":
            self._set_status("stopped", "forwarder ended")

    # -- the loop --------------------------------------------------------

    async def _probe(self, session: aiohttp.ClientSession) -> bool:
        if not self.route:
            return False
        started = time.monotonic()
        ok = await self.route.probe(session, self.options.health_path)
        self.metrics.probe.observe(time.monotonic() - started)
        return ok

    async def _heartbeat(self, session: aiohttp.ClientSession) -> None:
        if await self._probe(session):
            if not self.healthy.is_set():
                log.info("%s state=serving local=127.0.0.1:%d", self.route.describe(),
                         self.options.local_port)
                self._set_status("serving")
            self.healthy.set()
            await self._look_for_successor(session)
            await self._warn_near_end()
            await self._sleep(self.options.heartbeat_time)
            return
        if self.route:
            log.warning("%s state=probe-failed", self.route.describe())
        self.healthy.clear()
        await self._recover(session)

    async def _recover(self, session: aiohttp.ClientSession) -> None:
        self.attempts += 1
        self._note_waiting()
        try:
            await self._recover_once(session)
        except (slurm.SlurmUnknown, Unreachable, RuntimeError) as exc:
            self._set_status("waiting", f"cluster unknown: {exc}")
            log.warning("slurm=unknown action=wait error=%r", str(exc)[:300])
        if not self.healthy.is_set():
            if self.ever_served or self.attempts < self.options.max_attempts_get_server_and_port:
                return await self._sleep(self.options.delay_between_server_and_port)
            raise NeverServed(f"no healthy endpoint after {self.attempts} attempts; "
                              f"see: slurm-persist logs --name {self.options.name}")

    async def _recover_once(self, session: aiohttp.ClientSession) -> None:
        if self.route and self.route.tunnel.lost:
            self.chain.site.failed(self.route.tunnel.login)
        jobs, snap = await asyncio.to_thread(self._read_cluster)
        if snap.chain.stopped:
            self._set_status("stopped", snap.chain.reason)
            log.error("service=%s state=chain-stopped reason=%r", self.options.name, snap.chain.reason)
            self.hooks.emit("chain-stopped", reason=snap.chain.reason)
            raise ChainStopped(f"the chain is stopped: {snap.chain.reason}")
        target = self.chain.serving(jobs, snap)
        if target and await self._switch(target, session):
            return
        if not jobs:
            await self._start_chain()
            return
        waiting = " ".join(f"job={j.job_id} state={j.state} node={j.node or '-'} reason={j.reason}"
                           for j in jobs)
        silent = [j for j in jobs if j.running and j.job_id not in snap.endpoints
                  and j.job_id not in snap.errors]
        if silent:  # a running job with no record: can it write one?
            problem = await asyncio.to_thread(self.conditions.home_problem)
            waiting = f"{problem}; {waiting}" if problem else waiting
        self._set_status("waiting", waiting)
        log.info("service=%s state=waiting %s", self.options.name, waiting)

    def _read_cluster(self):
        return self.chain.jobs(), self.chain.snapshot()

    async def _start_chain(self) -> None:
        """SLURM says for certain that no job is left: start a chain, unless
        the last ones ended without serving. Jobs that die before their
        agent runs (a broken sbatch script, an option SLURM refuses at run
        time) escape the agent's crash-loop guard and would otherwise be
        replaced every few seconds, for ever. A chain the cluster ended (a
        full home, a failed node) is no fault of the service: waited out."""
        if not self._served_since_start:
            verdict = await asyncio.to_thread(self.conditions.why_unserved, self._started_job)
            if verdict.cluster:
                await self._wait_out(verdict)
            else:
                self.unserved_chains += 1
            if self.unserved_chains >= self.options.crash_loop_jobs:
                reason = (f"{self.unserved_chains} chains in a row ended without serving; "
                          f"not starting another. The last, job {self._started_job}: "
                          f"{verdict.reason}")
                self._set_status("stopped", reason)
                log.error("service=%s state=chain-not-restarted reason=%r", self.options.name,
                          reason)
                self.hooks.emit("chain-stopped", reason=reason)
                raise ChainStopped(reason)
        self._started_job, _ = await asyncio.to_thread(self.chain.ensure)
        self._served_since_start = False

    async def _wait_out(self, verdict: Verdict) -> None:
        delay = self.conditions.backoff.next()
        self._set_status("waiting", f"cluster condition: {verdict.reason}; "
                                    f"next chain in {delay:.0f} s")
        log.warning("service=%s state=cluster-condition retry_in=%.0fs reason=%r",
                    self.options.name, delay, verdict.reason)
        await self.conditions.wait_out(delay, verdict)

    async def _switch(self, target: Endpoint, session: aiohttp.ClientSession) -> bool:
        """Build a route to target and take it once it answers the probe."""
        for login in self._logins(target):
            try:
                tunnel = await self._tunnel(login)
                route = Route(target, tunnel, await tunnel.forward(remote_of(target)),
                              widen=lambda login=login: self._extra_tunnel(login))
            except TunnelError as exc:
                log.warning("login=%s state=tunnel-failed error=%r", login, str(exc))
                self.chain.site.failed(login)
                continue
            await route.start()
            if not await route.probe(session, self.options.health_path):
                log.warning("%s state=not-answering", route.describe())
                await route.retire()  # else its -L forward stays in the ssh master
                continue
            old, self.route = self.route, route
            self._tell_served(old, route)
            self.metrics.on_job(target.job_id, target.node, login, target.ends_at)
            if old:
                self.metrics.switches.inc()
                retiring = asyncio.ensure_future(old.retire())
                self._retiring.add(retiring)
                retiring.add_done_callback(self._retiring.discard)
                self.status.switches += 1
            self.healthy.set()
            self.ever_served = self._served_since_start = True
            self.unserved_chains = 0
            self.conditions.backoff.reset()
            self._set_status("serving")
            log.info("%s state=serving local=127.0.0.1:%d", route.describe(), self.options.local_port)
            return True
        return False

    def _logins(self, target: Endpoint) -> list[str]:
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
        current = self.route.tunnel.login if self.route and self.route.tunnel.alive else None
        order = self.chain.site.order()
        return [current] + [n for n in order if n != current] if current else order

    async def _tunnel(self, login: str) -> Tunnel:
        tunnel = self._tunnels.get(login)
        if tunnel is None or not tunnel.alive:
            index = self.options.login_nodes.index(login)
            tunnel = Tunnel(self.options, login, index, self._runtime)
            await tunnel.start()
            self._tunnels[login] = tunnel
        return tunnel

    async def _extra_tunnel(self, login: str) -> Tunnel:
        """Another ssh master to login, for a route whose lanes are full."""
        self._extra_masters += 1
        index = len(self.options.login_nodes) * self._extra_masters + \
            self.options.login_nodes.index(login)
        tunnel = Tunnel(self.options, login, index, self._runtime)
        await tunnel.start()
        return tunnel

    async def _look_for_successor(self, session: aiohttp.ClientSession) -> None:
        """A later job serving means it is time to move over: the overlap's
        handover, or a job SLURM failed (NODE_FAIL) whose orphaned process
        still answers while its successor serves nobody. The records are
        read every heartbeat (no SLURM call); SLURM is asked only when a
        newer record serves, once per such job."""
        try:
            snap = await asyncio.to_thread(self.chain.snapshot)
        except (Unreachable, RuntimeError):
            return
        current = int(self.route.endpoint.job_id)
        newer = [e for e in snap.endpoints.values() if int(e.job_id) > current
                 and e.state == "serving" and e.job_id not in self._not_running]
        if not newer:
            return
        try:
            jobs = await asyncio.to_thread(self.chain.jobs)
        except (slurm.SlurmUnknown, Unreachable, RuntimeError):
            return  # unknown: keep the route that answers
        running = {j.job_id for j in jobs if j.running}
        self._not_running.update(e.job_id for e in newer if e.job_id not in running)
        target = self.chain.serving(jobs, snap)
        if target and int(target.job_id) > current:
            reason = "handover" if str(current) in running else "current-job-gone"
            log.info("job=%s state=%s to_job=%s", current, reason, target.job_id)
            await self._switch(target, session)

    def _tell_served(self, old: Optional[Route], new: Route) -> None:
        e = new.endpoint
        where = {"job": e.job_id, "node": e.node, "login": new.tunnel.login}
        if old is None:
            self.hooks.emit("serving", **where)
        elif old.endpoint.job_id != e.job_id:
            self.hooks.emit("switched", from_job=old.endpoint.job_id, to_job=e.job_id,
                            node=e.node, login=new.tunnel.login)
        self._waiting_since = None

    def _note_waiting(self) -> None:
        """Once per outage, when it has lasted waiting_alert_seconds."""
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        elif now - self._waiting_since >= self.options.waiting_alert_seconds:
            self.hooks.emit("waiting", seconds=round(now - self._waiting_since),
                            message=self.status.message)
            self._waiting_since = float("inf")  # told; reset when it serves

    async def _warn_near_end(self) -> None:
        """The serving job ends within its warning time plus two minutes and
        SLURM knows no later job of the chain: once per job, one squeue."""
        e = self.route.endpoint
        ahead = max(self.options.overlap_minutes * 60, self.options.warn_seconds) + 120
        if e.ends_at is None or e.job_id in self._told_near_end or time.time() < e.ends_at - ahead:
            return
        try:
            jobs = await asyncio.to_thread(self.chain.jobs)
        except (slurm.SlurmUnknown, Unreachable, RuntimeError):
            return
        self._told_near_end.add(e.job_id)
        if not any(int(j.job_id) > int(e.job_id) for j in jobs):
            log.warning("job=%s state=time-limit-near successor=none", e.job_id)
            self.hooks.emit("time-limit-near", job=e.job_id,
                            seconds_left=round(e.ends_at - time.time()))

    async def _sleep(self, seconds: float) -> None:
        self._kick.clear()
        try:
            await asyncio.wait_for(self._kick.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # -- clients ---------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients += 1
        self.metrics.connections.inc()
        self.metrics.open.inc()
        if not self.healthy.is_set():
            self.metrics.held.inc()
        try:
            await self._carry(reader, writer)
        finally:
            self._clients -= 1
            self.metrics.open.dec()
            for listener in self._listeners:
                listener.wake()

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Carry one client connection to the current route. Until the gate
        acknowledges, the client's bytes are kept: if the route fails first,
        they cannot have reached the server, and go to the next route."""
        deadline = time.monotonic() + self.options.hold_seconds
        try:  # most clients speak first: send their request with the secret
            sent = bytearray(await asyncio.wait_for(reader.read(CHUNK), COALESCE))
        except asyncio.TimeoutError:
            sent = bytearray()
        while True:
            route = await self._wait_route(deadline - time.monotonic())
            if route is None:
                self.events.note(f"client=dropped reason=no-healthy-route-within-"
                                 f"{self.options.hold_seconds:.0f}s")
                self.metrics.failed.inc()
                writer.close()
                return
            try:
                upstream, lane = await route.enter(reader, sent)
                break
            except (OSError, asyncio.TimeoutError) as exc:
                # One failed connection is no verdict on the route: let the
                # probe decide at once, and try again shortly.
                log.debug("%s state=connection-retry error=%r", route.describe(),
                          str(exc) or type(exc).__name__)
                self._kick.set()
                await asyncio.sleep(0.5)
        self.metrics.up(len(sent))
        await route.carry((reader, writer), upstream, lane, (self.metrics.up, self.metrics.down))

    async def _wait_route(self, timeout: float) -> Optional[Route]:
        if timeout <= 0:
            return None
        try:
            await asyncio.wait_for(self.healthy.wait(), timeout)
        except asyncio.TimeoutError:
            return None
        return self.route

    def _set_status(self, state: str, message: str = "") -> None:
        if state in STATES:
            self.metrics.state.state(state)
        if state != self.status.state:
            self.status.since = time.time()
        self.status.state, self.status.message = state, message
        if self.route:
            e = self.route.endpoint
            self.status.job_id, self.status.node, self.status.login = \
                e.job_id, e.node, self.route.tunnel.login
        tmp = self._status_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(asdict(self.status)))
            os.replace(tmp, self._status_path)
        except OSError as exc:  # a full local disk: keep forwarding, say it once per window
            self.events.note("status=unwritable", f"path={tmp} error={exc.strerror}")


def read_status(name: str) -> Optional[Status]:
    try:
        return Status(**json.loads((state_dir(name) / "status.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
