"""Replicas: every slot keeps a chain of its own, and a route once it serves.

While other slots serve, a slot may lose both its jobs (a node lost with
its queued successor, a crash in both): it is started again. SLURM is
asked at most every LOOK_EVERY seconds, and only while fewer routes serve
than there are replicas. A slot started crash_loop_jobs times in a row
without serving is given up (logged once) until it serves again; the other
slots carry the service meanwhile.

A slot that serves but has no route gets one built in the background: a
stopped node's record says serving until SLURM notices (30 s on the
sandbox, 300 s by default), its probe takes up to PROBE_TIMEOUT per login
node, and meanwhile the heartbeat must go on probing the other replicas.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from remote_agent import slurm
from remote_agent.endpoint import Endpoint

from .cluster import Chain
from .config import Options
from .remote import Unreachable

log = logging.getLogger("slurm_persist.refill")

# One squeue a minute while a slot is missing: a restarted slot waits in
# the queue for minutes anyway, and the service is up on the others.
LOOK_EVERY = 60.0
# A job whose route did not answer is tried again after this.
CANDIDATE_RETRY = 30.0


class Refill:
    def __init__(self, options: Options, chain: Chain):
        self.options, self.chain = options, chain
        self._unserved_starts: dict[int, int] = {}
        self.given_up: set[int] = set()
        self._next_look = 0.0
        self._adopting: dict[int, asyncio.Future] = {}
        self._retry_at: dict[str, float] = {}

    def adopt(self, target: Endpoint, switch: Callable[[Endpoint], Awaitable[bool]]) -> None:
        """Build a route to a serving slot that has none, in the background."""
        if target.slot in self._adopting or time.monotonic() < self._retry_at.get(target.job_id, 0):
            return

        async def attempt() -> None:
            try:
                if not await switch(target):
                    self._retry_at[target.job_id] = time.monotonic() + CANDIDATE_RETRY
            finally:
                self._adopting.pop(target.slot, None)
        self._adopting[target.slot] = asyncio.ensure_future(attempt())

    def close(self) -> None:
        for task in list(self._adopting.values()):
            task.cancel()

    def served(self, slot: int) -> None:
        self._unserved_starts.pop(slot, None)
        self.given_up.discard(slot)

    async def look(self, serving: int) -> None:
        """While healthy: are all slots' chains alive? At most once a minute."""
        if serving >= self.options.replicas or time.monotonic() < self._next_look:
            return
        self._next_look = time.monotonic() + LOOK_EVERY
        try:
            jobs = await asyncio.to_thread(self.chain.jobs)
            await self.start_missing(jobs)
        except (slurm.SlurmUnknown, Unreachable, RuntimeError) as exc:
            log.warning("slurm=unknown action=refill-later error=%r", str(exc)[:300])

    async def start_missing(self, jobs: list[slurm.Job]) -> None:
        """Start the slots SLURM has no job of; SlurmUnknown propagates."""
        have = {self.chain.slot(j) for j in jobs}
        wanted = []
        for slot in range(self.options.replicas):
            if slot in have or slot in self.given_up:
                continue
            if self._unserved_starts.get(slot, 0) >= self.options.crash_loop_jobs:
                self.given_up.add(slot)
                log.error("service=%s slot=%d state=given-up reason=%r", self.options.name, slot,
                          f"started {self.options.crash_loop_jobs} times in a row without "
                          "serving; the other slots carry the service")
                continue
            wanted.append(slot)
        if not wanted:
            return
        for slot in wanted:
            self._unserved_starts[slot] = self._unserved_starts.get(slot, 0) + 1
        log.info("service=%s slots=%s state=restarting reason=%r", self.options.name,
                 ",".join(map(str, wanted)), "no job of the slot is left")
        await asyncio.to_thread(self.chain.ensure, wanted)
