"""While a job serves: is a later one ready to take over, and is there a
later one at all? Asked every heartbeat, and quiet on SLURM.

A later job serving means it is time to move over: the overlap's handover,
or a job SLURM failed (NODE_FAIL) whose orphaned process still answers
while its successor serves nobody (seen for two minutes on the sandbox).
The records are read every heartbeat (no SLURM call); SLURM is asked only
when a newer record serves, once per such job, and once per job near its
time limit, to tell whoever listens when no successor is queued.
"""

from __future__ import annotations

import asyncio
import logging
import time

from remote_agent import slurm
from remote_agent.endpoint import Endpoint

from .cluster import Chain
from .config import Options
from .hooks import Hooks
from .remote import Unreachable

log = logging.getLogger("slurm_persist.handover")

# Tell of a missing successor this long before the job's own warning.
NEAR_END_MARGIN = 120.0


class Handover:
    def __init__(self, options: Options, chain: Chain, hooks: Hooks):
        self.options, self.chain, self.hooks = options, chain, hooks
        # Newer records that said serving for a job SLURM did not run: not asked again.
        self._not_running: set[str] = set()
        self._told_near_end: set[str] = set()

    async def later_serving(self, current: Endpoint) -> Endpoint | None:
        """A later job's record that serves, once SLURM confirms it runs."""
        try:
            snap = await asyncio.to_thread(self.chain.snapshot)
        except (Unreachable, RuntimeError):
            return None
        mine = int(current.job_id)
        newer = [e for e in snap.endpoints.values() if int(e.job_id) > mine
                 and e.state == "serving" and e.job_id not in self._not_running]
        if not newer:
            return None
        try:
            jobs = await asyncio.to_thread(self.chain.jobs)
        except (slurm.SlurmUnknown, Unreachable, RuntimeError):
            return None  # unknown: keep the route that answers
        running = {j.job_id for j in jobs if j.running}
        self._not_running.update(e.job_id for e in newer if e.job_id not in running)
        target = self.chain.serving(jobs, snap)
        if target is None or int(target.job_id) <= mine:
            return None
        reason = "handover" if current.job_id in running else "current-job-gone"
        log.info("job=%s state=%s to_job=%s", mine, reason, target.job_id)
        return target

    async def until_serving(self, starting: set, seconds: float, sleep, every: float) -> None:
        """Sleep seconds; but while a job runs that does not serve yet, read
        its record every `every` s (no SLURM call) and end as soon as it
        serves: `up` answered 5 s after the job served, at the next look."""
        deadline = time.monotonic() + seconds
        while starting and time.monotonic() < deadline:
            await sleep(min(every, deadline - time.monotonic()))
            try:
                snap = await asyncio.to_thread(self.chain.snapshot)
            except (Unreachable, RuntimeError):
                continue
            if any(e.state == "serving" for e in snap.endpoints.values()
                   if e.job_id in starting):
                return
        await sleep(max(0.0, deadline - time.monotonic()))

    async def warn_near_end(self, current: Endpoint) -> None:
        """The job ends within its warning time plus NEAR_END_MARGIN and
        SLURM knows no later job of the chain: once per job, one squeue."""
        ahead = max(self.options.overlap_minutes * 60, self.options.warn_seconds) + NEAR_END_MARGIN
        if (current.ends_at is None or current.job_id in self._told_near_end
                or time.time() < current.ends_at - ahead):
            return
        try:
            jobs = await asyncio.to_thread(self.chain.jobs)
        except (slurm.SlurmUnknown, Unreachable, RuntimeError):
            return
        self._told_near_end.add(current.job_id)
        if not any(int(j.job_id) > int(current.job_id) for j in jobs):
            log.warning("job=%s state=time-limit-near successor=none", current.job_id)
            self.hooks.emit("time-limit-near", job=current.job_id,
                            seconds_left=round(current.ends_at - time.time()))
