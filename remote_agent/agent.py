"""One job of a chain: start the server behind the gate, keep exactly one
successor queued, publish this job's endpoint, supervise, drain, hand over.

Runs as the batch shell itself (``exec python3 -m remote_agent job DIR`` in
slurm.sbatch), so ``--signal=B:USR1@N`` and SIGTERM arrive here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from . import chain, endpoint, slurm
from .endpoint import Endpoint
from .gate import Gate
from .joblog import SERVER_CAP, Capped, Summariser, copy_output, flush_every, write_fd
from .publisher import Publisher, describe
from .reverse import Reverse
from .spec import Spec

log = logging.getLogger("slurm_persist.agent")

HEALTH_EVERY = 15.0
HEALTH_FAILURES = 4
OVERLAP_POLL = 2.0
# Reasons to end that are SLURM's doing, not the server's fault.
SIGNALLED = ("cancelled", "time limit near")
# Reverse mode: how long a job may look for a login node to carry its socket.
REVERSE_TIMEOUT = 300.0


class Agent:
    def __init__(self, spec: Spec, job_id: str, node: str, user: str):
        self.spec = spec
        self.job_id = job_id
        self.node = node
        self.user = user
        self.service_dir = spec.service_path
        self.secret = secrets.token_hex(16)
        self.events = Summariser(lambda line: self.say("%s", line))
        self.publisher = Publisher(self.service_dir, self.events)
        self.server_output = Capped(write_fd(1), SERVER_CAP, "server")
        self.gate = Gate(self.secret, self._open_server, self.events)
        self.server: Optional[asyncio.subprocess.Process] = None
        self.upstream: Optional[Upstream] = None
        self._private = Path(tempfile.mkdtemp(prefix=f"slurm-persist-{job_id}-"))
        self.reverse = (Reverse(spec, job_id, self._private / "gate.sock", self.say)
                        if spec.mode == "reverse" else None)
        self._reverse_task: Optional[asyncio.Future] = None
        self.gate_port: Optional[int] = None
        self.ends_at: Optional[float] = None
        self.restarts = 0
        self.successor: Optional[str] = None
        self.record: Optional[Endpoint] = None
        self.stop_reason: Optional[str] = None
        self._wake = asyncio.Event()

    def say(self, message: str, *args) -> None:
        log.info(f"job={self.job_id} node={self.node} " + message, *args)

    # -- the job's life --------------------------------------------------

    async def run(self) -> int:
        state = chain.load(self.service_dir)
        if state.stopped:
            self.say("state=chain-stopped reason=%r", state.reason)
            return 0
        self._install_signals()
        flushing = asyncio.ensure_future(flush_every(self.events))
        try:
            return await self._live()
        finally:
            flushing.cancel()
            self.events.flush()

    async def _live(self) -> int:
        own = await self._own_job()
        self.ends_at = own.end_epoch() if own else None
        successor_task = asyncio.ensure_future(self._keep_successor(own))
        if not await self._open_gate():
            return await self._failed_job(successor_task)
        self._publish("starting")
        healthy = await self._start_healthy()
        if not healthy and self.stop_reason in SIGNALLED:
            await self._shutdown(successor_task)
            return 0
        if not healthy:
            return await self._failed_job(successor_task)
        # Serving ends a crash loop, not a stop: `down` may have marked the
        # chain stopped since run() began, so re-read it right before saving.
        state = chain.load(self.service_dir)
        self.publisher.save_chain(chain.ChainState(0, state.stopped, state.reason))
        self._publish("serving")
        self.say("state=serving %s %s", self._where(), self.upstream)
        if self.spec.listen == "tcp":
            self.say("listen=tcp warning=%r", "other users' processes on this node can "
                     "reach the server's loopback port; use listen = unix if it can")
        await self._supervise()
        await self._shutdown(successor_task)
        return 0

    async def _failed_job(self, successor_task: asyncio.Future) -> int:
        state = chain.load(self.service_dir)
        failed = state.failed_jobs + 1
        if failed >= self.spec.crash_loop_jobs and not state.stopped:
            reason = (f"crash loop: {failed} jobs in a row never served "
                      f"(last job {self.job_id}); fix the service and run up again")
            self.publisher.save_chain(chain.ChainState(failed, True, reason))
            self.say("state=chain-stopped reason=%r", reason)
            successor = await _wait_quietly(successor_task, 30)
            if successor:
                await self._slurm(slurm.scancel_argv([successor]))
        else:
            self.publisher.save_chain(chain.ChainState(failed, state.stopped, state.reason))
            if state.stopped:
                successor_task.cancel()
            else:
                # The next job carries the chain on and is what the crash-loop
                # guard counts. Seen on the sandbox: a server exiting 10 ms
                # after start beat the squeue + sbatch, and the chain ended at
                # failed_jobs=1 with no job left and no stop mark.
                await _wait_quietly(successor_task, 30)
        self.say("state=failed failed_jobs=%d reason=%r", failed, self.stop_reason)
        if self.record is not None:
            self._publish("stopped")
        await self._stop_server()
        await self._close_reverse()
        self.publisher.remove(self.job_id)
        shutil.rmtree(self._private, ignore_errors=True)
        return 1

    async def _supervise(self) -> None:
        """Until a signal, a handover or restarts run out."""
        watchers = [asyncio.ensure_future(self._watch_server())]
        if self.spec.overlap_minutes:
            watchers.append(asyncio.ensure_future(self._watch_for_successor()))
        if self._reverse_task is not None:
            # Shielded: its ssh must outlive this, to carry the drain.
            watchers.append(asyncio.shield(self._reverse_task))
        woken = asyncio.ensure_future(self._wake.wait())
        done, _ = await asyncio.wait([woken, *watchers], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not woken and not task.cancelled() and task.exception():
                # A bug in the agent must end the job loudly, not leave it half alive.
                log.error("job=%s node=%s state=agent-error", self.job_id, self.node,
                          exc_info=task.exception())
                self._finish("agent error")
        for task in [woken, *watchers]:
            task.cancel()

    async def _shutdown(self, successor_task: asyncio.Future) -> None:
        self.say("state=draining reason=%r active=%d", self.stop_reason, self.gate.active)
        self._publish("draining")
        if self.stop_reason in SIGNALLED:
            # Cancelled, or the time limit near without overlap: the successor
            # starts now, beside this job's drain, not after it (a long-lived
            # WebSocket held a rollover for the whole drain otherwise).
            await self._release_successor(successor_task)
        left = await self.gate.drain(self.spec.drain_seconds)
        await self._stop_server()
        await self._close_reverse()
        self.publisher.remove(self.job_id)
        shutil.rmtree(self._private, ignore_errors=True)
        successor_task.cancel()
        self.say("state=ended reason=%r unfinished_connections=%d server_output_dropped=%d",
                 self.stop_reason, left, self.server_output.dropped)

    # -- the way in ------------------------------------------------------

    async def _open_gate(self) -> bool:
        """Direct mode: the gate on a port of the node. Reverse mode: on a
        private socket, carried by ssh -R to a login node."""
        if self.reverse is None:
            self.gate_port = await self.gate.start()
            return True
        await self.gate.start_unix(str(self.reverse.gate_socket))
        self._reverse_task = asyncio.ensure_future(self.reverse.run(self._route_changed))
        up = asyncio.ensure_future(self.reverse.wait_up(REVERSE_TIMEOUT))
        await asyncio.wait([up, self._reverse_task], return_when=asyncio.FIRST_COMPLETED)
        if up.done() and up.result():
            return True
        up.cancel()
        if self._reverse_task.done():
            self.stop_reason = str(self._reverse_task.exception())
        else:
            self.stop_reason = f"no login node carried the socket within {REVERSE_TIMEOUT:.0f} s"
        self.say("state=unreachable reason=%r", self.stop_reason)
        return False

    def _route_changed(self) -> None:
        if self.record is not None:  # before the first record, _publish reads it anyway
            self._publish(self.record.state)

    def _route(self) -> Dict[str, object]:
        if self.reverse is None:
            return {"port": self.gate_port, "socket": None, "login_node": None}
        hop = self.reverse.current
        return {"port": None, "socket": str(hop.socket), "login_node": hop.login}

    def _where(self) -> str:
        route = self._route()
        if route["port"] is not None:
            return f"port={route['port']}"
        return f"login={route['login_node']} socket={route['socket']}"

    async def _close_reverse(self) -> None:
        if self.reverse is None:
            return
        if self._reverse_task is not None:
            self._reverse_task.cancel()
            await asyncio.gather(self._reverse_task, return_exceptions=True)
        await self.reverse.close()

    # -- the server ------------------------------------------------------

    def _open_server(self):
        return self.upstream.open()

    async def _start_healthy(self) -> bool:
        """Start the server, restarting it on early exit, until healthy."""
        while True:
            if await self._start_server():
                return True
            if self.stop_reason or self.restarts >= self.spec.max_restarts:
                return False
            self.restarts += 1
            delay = min(2 ** self.restarts, 60)
            self.say("state=restarting restarts=%d delay=%ds", self.restarts, delay)
            await asyncio.sleep(delay)

    async def _start_server(self) -> bool:
        self.upstream = Upstream.fresh(self.spec.listen, self._private, self.restarts)
        env = dict(os.environ, SLURM_PERSIST_SERVICE=self.spec.name, **self.upstream.env())
        if self.ends_at:
            env["SLURM_PERSIST_JOB_END"] = str(self.ends_at)
        self.say("state=starting command=%r %s", self.spec.command, self.upstream)
        try:
            # Its output comes through us, so that a server printing in a
            # loop cannot fill the shared home (SERVER_CAP).
            self.server = await asyncio.create_subprocess_exec(
                *self.spec.command, cwd=self.spec.app_dir, env=env, start_new_session=True,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        except OSError as exc:
            self.stop_reason = f"cannot start {self.spec.command[0]}: {exc.strerror}"
            self.say("state=start-failed reason=%r", self.stop_reason)
            return False
        asyncio.ensure_future(copy_output(self.server.stdout, self.server_output))
        deadline = time.monotonic() + self.spec.health_timeout
        while time.monotonic() < deadline and not self.stop_reason:
            if self.server.returncode is not None:
                self.say("state=server-exited code=%d before-healthy", self.server.returncode)
                return False
            if await http_ok(self.upstream.open, self.spec.health_path):
                return True
            await asyncio.sleep(0.5)
        if not self.stop_reason:
            self.stop_reason = (f"server not healthy at {self.spec.health_path} on "
                                f"{self.upstream} within {self.spec.health_timeout:.0f} s")
            self.say("state=unhealthy reason=%r", self.stop_reason)
        await self._stop_server()
        return False

    async def _watch_server(self) -> None:
        """Restart a server that exits or stops answering, a bounded number of times."""
        failures = 0
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(self.server.wait()), HEALTH_EVERY)
                failures = HEALTH_FAILURES
                self.say("state=server-exited code=%s", self.server.returncode)
            except asyncio.TimeoutError:
                ok = await http_ok(self.upstream.open, self.spec.health_path)
                failures = 0 if ok else failures + 1
            if failures < HEALTH_FAILURES:
                continue
            await self._stop_server()
            if self.restarts >= self.spec.max_restarts:
                return self._finish(f"server failed after {self.restarts} restarts")
            self.restarts += 1
            self._publish("starting")
            if not await self._start_healthy():
                return self._finish(f"server failed after {self.restarts} restarts")
            self._publish("serving")
            self.say("state=serving restarts=%d %s", self.restarts, self.upstream)
            failures = 0

    async def _stop_server(self) -> None:
        proc, self.server = self.server, None
        if proc is None or proc.returncode is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                await asyncio.wait_for(proc.wait(), wait)
                return
            except asyncio.TimeoutError:
                continue

    # -- the chain -------------------------------------------------------

    async def _own_job(self) -> Optional[slurm.Job]:
        try:
            jobs = await self._squeue(job_id=self.job_id)
        except slurm.SlurmUnknown as exc:
            self.say("slurm=unknown query=own-job error=%r", str(exc))
            return None
        return jobs[0] if jobs else None

    async def _keep_successor(self, own: Optional[slurm.Job]) -> Optional[str]:
        """Make sure exactly one later job of this chain is queued.

        A job with a higher id than ours is a successor (ids only grow); lower
        ids are predecessors still draining. An unknown answer is retried,
        never taken as "none", and a failed sbatch is followed by a fresh
        look before any second try, since it may have gone through.
        """
        delay = 5.0
        while True:
            if chain.load(self.service_dir).stopped:
                return None
            try:
                jobs = await self._squeue(job_name=self.spec.job_name)
                self._clean_stale_records(jobs)
                later = [j.job_id for j in jobs if int(j.job_id) > int(self.job_id)]
                if later:
                    self.successor = later[0]
                    self.say("successor=%s state=queued", ",".join(later))
                    return self.successor
                self.successor = await self._sbatch(self._dependency(own))
                self.say("successor=%s state=submitted", self.successor)
                return self.successor
            except slurm.SlurmUnknown as exc:
                self.say("slurm=unknown action=successor retry_in=%.0fs error=%r", delay, str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 120.0)

    def _dependency(self, own: Optional[slurm.Job]) -> str:
        limit = own.limit_minutes() if own else None
        if self.spec.overlap_minutes and limit:
            return slurm.after_start(self.job_id, limit - self.spec.overlap_minutes)
        return slurm.after_any(self.job_id)

    async def _release_successor(self, successor_task: asyncio.Future) -> None:
        """When cancelled, let the queued successor start now, not at the
        next scheduler pass; never for a chain that `down` stopped."""
        if chain.load(self.service_dir).stopped or not successor_task.done():
            return
        successor = successor_task.result()
        if successor:
            await self._slurm(slurm.release_argv(successor))
            self.say("successor=%s state=released", successor)

    async def _watch_for_successor(self) -> None:
        """Overlap mode: once a later job serves, hand over and end."""
        while True:
            await asyncio.sleep(OVERLAP_POLL)
            for path in (self.service_dir / endpoint.ENDPOINTS_DIR).glob("*.json"):
                if not path.stem.isdigit() or int(path.stem) <= int(self.job_id):
                    continue
                try:
                    newer = endpoint.read(path)
                except endpoint.EndpointError:
                    continue
                if newer.state == "serving":
                    self.say("successor=%s state=serving handover_in=%.0fs", newer.job_id,
                             self.spec.drain_seconds)
                    # Keep accepting while forwarders notice the new endpoint.
                    await asyncio.sleep(self.spec.drain_seconds)
                    return self._finish("handed over")

    def _clean_stale_records(self, active: List[slurm.Job]) -> None:
        alive = {j.job_id for j in active} | {self.job_id}
        for path in (self.service_dir / endpoint.ENDPOINTS_DIR).glob("*.json"):
            # Only job records: a .tmp-*.json is another job's write in flight.
            # Its own job may remove a record first (overlap): no error then.
            if path.stem.isdigit() and path.stem not in alive:
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:  # harmless left behind: readers trust running jobs only
                    self.events.note("record=unremovable", f"job={path.stem} {describe(exc)}")
                    continue
                self.say("record=%s state=removed-stale", path.stem)

    async def _squeue(self, **query) -> List[slurm.Job]:
        rc, out, err = await self._slurm(slurm.squeue_argv(self.user, **query))
        return slurm.interpret_squeue(rc, out, err)

    async def _sbatch(self, dependency: str) -> str:
        rc, out, err = await self._slurm(slurm.sbatch_argv(self.spec, dependency))
        return slurm.parse_sbatch(rc, out, err)

    async def _slurm(self, argv: List[str]):
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        except (OSError, asyncio.TimeoutError) as exc:
            return 255, "", f"{argv[0]}: {exc}"
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    # -- signals and records ---------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_event_loop()
        loop.add_signal_handler(signal.SIGUSR1, self._time_warning)
        loop.add_signal_handler(signal.SIGTERM, self._finish, SIGNALLED[0])
        loop.add_signal_handler(signal.SIGINT, self._finish, SIGNALLED[0])

    def _time_warning(self) -> None:
        """Without overlap, ending now lets the successor start before the
        hard kill. With overlap the successor is due to take over anyway:
        keep serving until it does (or SLURM ends this job)."""
        if self.spec.overlap_minutes:
            self.say("state=time-limit-near action=wait-for-successor")
            return
        self._finish(SIGNALLED[1])

    def _finish(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._wake.set()

    def _publish(self, state: str) -> None:
        if self.record is None:
            self.record = Endpoint(
                service=self.spec.name, job_id=self.job_id, node=self.node, host=self.node,
                state=state, started=time.time(), ends_at=self.ends_at, secret=self.secret,
                **self._route())
        self.record = self.record.with_state(state, restarts=self.restarts, **self._route())
        self.publisher.publish(self.record)


class Upstream:
    """Where this job's server listens. By default a Unix socket in a 0700
    directory of this job: on a shared node, 127.0.0.1 is open to every
    user's processes, a private socket only to ours. listen = "tcp" (for
    servers that cannot use a socket) takes a loopback port instead."""

    def __init__(self, socket_path: Optional[Path] = None, port: int = 0):
        self.socket_path, self.port = socket_path, port

    @classmethod
    def fresh(cls, listen: str, private: Path, attempt: int) -> "Upstream":
        if listen == "unix":
            return cls(socket_path=private / f"server-{attempt}.sock")
        return cls(port=_free_port())

    def env(self) -> Dict[str, str]:
        if self.socket_path:
            return {"SLURM_PERSIST_SOCKET": str(self.socket_path)}
        return {"HOST": "127.0.0.1", "PORT": str(self.port)}

    def open(self):
        if self.socket_path:
            return asyncio.open_unix_connection(str(self.socket_path))
        return asyncio.open_connection("127.0.0.1", self.port)

    def __str__(self) -> str:
        return f"server_socket={self.socket_path}" if self.socket_path else f"server_port={self.port}"


async def http_ok(opener, path: str, timeout: float = 5.0) -> bool:
    """True when GET path answers 2xx. Plain asyncio: the agent has no aiohttp."""
    try:
        reader, writer = await asyncio.wait_for(opener(), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        status = await asyncio.wait_for(reader.readline(), timeout)
        parts = status.split()
        return len(parts) >= 2 and parts[1][:1] == b"2"
    except (OSError, asyncio.TimeoutError, ValueError):
        return False
    finally:
        writer.close()


async def _wait_quietly(task: asyncio.Future, timeout: float):
    try:
        return await asyncio.wait_for(asyncio.shield(task), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        task.cancel()
        return None


def _free_port() -> int:
    """A loopback port for the server. The server binds it itself, so a
    collision is possible and is handled as an early exit + restart."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
