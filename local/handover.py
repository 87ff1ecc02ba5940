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
# A queued job free to start (not held by a dependency) has its record read
# between looks for this long after it was first seen so, as a running one
# has: `up` answered 5 s after the job served when the job was still pending
# at the forwarder's first look. Bounded, because each read is a python3 on
# the login node, and on a busy queue a job waits for hours.
ELIGIBLE_WATCH = 60.0


class Handover:
    def __init__(self, options: Options, chain: Chain, hooks: Hooks):
        self.options, self.chain, self.hooks = options, chain, hooks
        # Newer records that said serving for a job SLURM did not run: not asked again.
        self._not_running: set[str] = set()
        self._told_near_end: set[str] = set()
        self._eligible_since: dict[str, float] = {}

    def starting(self, jobs: list[slurm.Job], snap) -> set[str]:
        """The jobs whose records until_serving reads between looks: running
        ones that do not serve yet, and queued ones free to start, for
        ELIGIBLE_WATCH after they were first seen so."""
        now = time.monotonic()
        serving = {e.job_id for e in snap.endpoints.values() if e.state == "serving"}
        eligible = {j.job_id for j in jobs if j.pending and j.reason != "Dependency"}
        self._eligible_since = {job: self._eligible_since.get(job, now) for job in eligible}
        watched = {job for job, since in self._eligible_since.items()
                   if now - since < ELIGIBLE_WATCH}
        return ({j.job_id for j in jobs if j.running} | watched) - serving

    async def later_serving(self, current: dict[int, Endpoint],
                            replicas: int = 1) -> list[Endpoint]:
        """Records to move to, once SLURM confirms their jobs run: per slot,
        a later job than the current one that serves; with replicas, also a
        serving job of a slot that has no route."""
        try:
            snap = await asyncio.to_thread(self.chain.snapshot)
        except (Unreachable, RuntimeError):
            return []

        def after(e: Endpoint) -> int:
            mine = current.get(e.slot)
            return int(mine.job_id) if mine else -1
        newer = [e for e in snap.endpoints.values() if e.slot < replicas
                 and int(e.job_id) > after(e) and e.state == "serving"
                 and e.job_id not in self._not_running]
        if not newer:
            return []
        try:
            jobs = await asyncio.to_thread(self.chain.jobs)
        except (slurm.SlurmUnknown, Unreachable, RuntimeError):
            return []  # unknown: keep the routes that answer
        running = {j.job_id for j in jobs if j.running}
        self._not_running.update(e.job_id for e in newer if e.job_id not in running)
        targets = []
        for slot, target in sorted(self.chain.serving(jobs, snap).items()):
            if slot >= replicas or int(target.job_id) <= after(target):
                continue
            mine = current.get(slot)
            reason = ("replica-serving" if mine is None else
                      "handover" if mine.job_id in running else "current-job-gone")
            log.info("slot=%d job=%s state=%s to_job=%s", slot, mine.job_id if mine else "-",
                     reason, target.job_id)
            targets.append(target)
        return targets

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
        if not any(int(j.job_id) > int(current.job_id) and self.chain.slot(j) == current.slot
                   for j in jobs):
            log.warning("job=%s state=time-limit-near successor=none", current.job_id)
            self.hooks.emit("time-limit-near", job=current.job_id,
                            seconds_left=round(current.ends_at - time.time()))
