"""One job of a chain: start the server behind the gate, keep exactly one
successor queued, publish this job's endpoint, supervise, drain, hand over.

Runs as the batch shell itself (``exec python3 -m remote_agent job DIR`` in
slurm.sbatch), so ``--signal=B:USR1@N`` and SIGTERM arrive here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import List, Optional

from . import chain, slurm
from .endpoint import Endpoint
from .entry import Entry
from .gate import Gate
from .joblog import SERVER_CAP, Capped, Summariser, flush_every, write_fd
from .maintenance import Maintenance
from .publisher import Publisher
from .reverse import Reverse
from .server import Server
from .spec import Spec
from .successor import Successor

log = logging.getLogger("slurm_persist.agent")

# Reasons to end that are SLURM's doing, not the server's fault.
CANCELLED = "cancelled"
TIME_LIMIT_NEAR = "time limit near"
SIGNALLED = (CANCELLED, TIME_LIMIT_NEAR)


class Agent:
    def __init__(self, spec: Spec, job_id: str, node: str, user: str, slot: int = 0):
        self.spec, self.job_id, self.slot, self.node, self.user = spec, job_id, slot, node, user
        self.service_dir = spec.service_path
        self.secret = secrets.token_hex(16)
        self.events = Summariser(lambda line: self.say("%s", line))
        self.publisher = Publisher(self.service_dir, self.events)
        self.server_output = Capped(write_fd(1), SERVER_CAP, "server")
        self._private = Path(tempfile.mkdtemp(prefix=f"slurm-persist-{job_id}-"))
        self.server = Server(spec, self._private, None, self.server_output, self.say,
                             lambda: self.stop_reason is not None)
        self.gate = Gate(self.secret, self.server.connect, self.events)
        self.entry = Entry(self.gate, Reverse(spec, job_id, self._private / "gate.sock", self.say)
                           if spec.mode == "reverse" else None)
        self.ends_at: Optional[float] = None
        self.keeper = Successor(spec, job_id, user, slot, self.say, self.events)
        self.maintenance: Optional[Maintenance] = None
        self.record: Optional[Endpoint] = None
        self.stop_reason: Optional[str] = None
        self._wake = asyncio.Event()

    def say(self, message: str, *args) -> None:
        slot = f" slot={self.slot}" if self.spec.replicas > 1 else ""
        log.info(f"job={self.job_id} node={self.node}{slot} " + message, *args)

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
        own = await self.keeper.own_job()
        self.ends_at = self.server.ends_at = own.end_epoch() if own else None
        if not self.spec.overlap_minutes:
            self.maintenance = Maintenance(slurm.shortest_minutes(self.spec, self.keeper.script()),
                                           self.ends_at, self.spec.warn_seconds,
                                           self.keeper.slurm, self.say)
        successor_task = asyncio.ensure_future(self.keeper.keep(own))
        if not await self._open_gate():
            return await self._failed_job(successor_task)
        self._publish("starting")
        healthy = await self.server.start_healthy()
        if not healthy and self.stop_reason in SIGNALLED:
            await self._shutdown(successor_task)
            return 0
        if not healthy:
            self.stop_reason = self.stop_reason or self.server.failure
            return await self._failed_job(successor_task)
        # Serving ends a crash loop, not a stop: `down` may have marked the
        # chain stopped since run() began, so re-read it right before saving.
        state = chain.load(self.service_dir)
        self.publisher.save_chain(chain.ChainState(0, state.stopped, state.reason))
        self._publish("serving")
        self.say("state=serving %s %s", self.entry.where(), self.server.upstream)
        await self._supervise(successor_task)
        await self._shutdown(successor_task)
        return 0

    async def _failed_job(self, successor_task: asyncio.Future) -> int:
        state = chain.load(self.service_dir)
        after = chain.after_failure(state, self.job_id, self.spec.crash_loop_jobs)
        self.publisher.save_chain(after)
        if after.stopped and not state.stopped:
            self.say("state=chain-stopped reason=%r", after.reason)
            successor = await _wait_quietly(successor_task, 30)
            if successor:
                await self.keeper.slurm(slurm.scancel_argv([successor]))
        elif state.stopped:
            successor_task.cancel()
        else:
            # The next job carries the chain on and is what the crash-loop
            # guard counts. Seen on the sandbox: a server exiting 10 ms
            # after start beat the squeue + sbatch, and the chain ended at
            # failed_jobs=1 with no job left and no stop mark.
            await _wait_quietly(successor_task, 60)
        self.say("state=failed failed_jobs=%d reason=%r", after.failed_jobs, self.stop_reason)
        if self.record is not None:
            self._publish("stopped")
        await self._clean_up()
        return 1

    async def _clean_up(self) -> None:
        """What every ending leaves: no server, no way in, no record, no
        private directory."""
        await self.server.stop()
        await self.entry.close()
        self.publisher.remove(self.job_id)
        shutil.rmtree(self._private, ignore_errors=True)

    async def _supervise(self, successor_task: asyncio.Future) -> None:
        """Until a signal, a handover or restarts run out."""
        watchers: List[asyncio.Future] = [asyncio.ensure_future(self._watch_server())]
        if self.spec.overlap_minutes:
            watchers.append(asyncio.ensure_future(self._handover()))
        if self.maintenance is not None:
            watchers.append(asyncio.ensure_future(self._before_maintenance(successor_task)))
        if self.entry.carrying is not None:
            # Shielded: its ssh must outlive this, to carry the drain.
            watchers.append(asyncio.shield(self.entry.carrying))
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
        # Before the record says draining and before the release (an scontrol,
        # seconds on a busy login node): CI saw a request that came after
        # "state=draining" served by this job, which the time limit then ends.
        self.gate.stop_accepting()
        self.say("state=draining reason=%r active=%d", self.stop_reason, self.gate.active)
        self._publish("draining")
        if self.stop_reason in SIGNALLED:
            # Cancelled, or the time limit near without overlap: the successor
            # starts now, beside this job's drain, not after it (a long-lived
            # WebSocket held a rollover for the whole drain otherwise).
            await self.keeper.release(successor_task)
        left = await self.gate.drain(self.spec.drain_seconds)
        await self._clean_up()
        successor_task.cancel()
        self.say("state=ended reason=%r unfinished_connections=%d server_output_dropped=%d",
                 self.stop_reason, left, self.server_output.dropped)

    async def _open_gate(self) -> bool:
        failure = await self.entry.open(self._route_changed)
        if failure is None:
            return True
        self.stop_reason = failure
        self.say("state=unreachable reason=%r", failure)
        return False

    def _route_changed(self) -> None:
        if self.record is not None:  # before the first record, _publish reads it anyway
            self._publish(self.record.state)

    async def _watch_server(self) -> None:
        self._finish(await self.server.watch(self._publish))

    async def _handover(self) -> None:
        await self.keeper.watch_for_serving()
        self._finish("handed over")

    async def _before_maintenance(self, successor_task: asyncio.Future) -> None:
        assert self.maintenance is not None
        await self.maintenance.watch(lambda: self.keeper.release(successor_task),
                                     self.keeper.watch_for_serving)
        self._finish("handed over")

    # -- signals and records ---------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_event_loop()
        loop.add_signal_handler(signal.SIGUSR1, self._time_warning)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._finish, CANCELLED)

    def _time_warning(self) -> None:
        """Without overlap, ending now lets the successor start before the
        hard kill. With overlap the successor is due to take over anyway:
        keep serving until it does (or SLURM ends this job)."""
        if self.spec.overlap_minutes:
            self.say("state=time-limit-near action=wait-for-successor")
            return
        ahead = self.maintenance.serves_to_end() if self.maintenance else None
        if ahead is not None:
            # Its successor waits until the maintenance has ended whatever
            # this job does: serve on until SLURM ends it.
            self.say("state=time-limit-near action=serve-to-end maintenance=%s", ahead.name)
            return
        self._finish(TIME_LIMIT_NEAR)

    def _finish(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._wake.set()

    def _publish(self, state: str) -> None:
        if self.record is None:
            self.record = Endpoint(
                service=self.spec.name, job_id=self.job_id, node=self.node, host=self.node,
                state=state, started=time.time(), ends_at=self.ends_at, secret=self.secret,
                slot=self.slot, app=self.spec.app, **self.entry.route())
        self.record = self.record.with_state(state, restarts=self.server.restarts,
                                             **self.entry.route())
        self.publisher.publish(self.record)


async def _wait_quietly(task: asyncio.Future, timeout: float):
    try:
        return await asyncio.wait_for(asyncio.shield(task), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        task.cancel()
        return None
