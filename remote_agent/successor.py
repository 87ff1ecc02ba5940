"""The successor keeper: exactly one later job of the chain queued, released
when this one ends early, watched for its taking over (overlap).

A job with a higher id than ours is a successor (ids only grow); lower ids
are predecessors still draining. An unknown answer from SLURM is retried,
never taken as "none", and a failed sbatch is followed by a fresh look
before any second try, since it may have gone through.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable, List, Optional

from . import chain, endpoint, joblog, layout, slots, slurm
from .joblog import Summariser
from .maintenance import LEAD
from .publisher import describe
from .slurm import capacity
from .spec import Spec, SpecError
from .spec import load as load_spec

# Overlap: how often to look for a successor's serving record.
OVERLAP_POLL = 2.0


class Successor:
    def __init__(self, spec: Spec, job_id: str, user: str, slot: int, say: Callable[..., None],
                 events: Summariser):
        self.spec, self.job_id, self.user, self.say, self.events = spec, job_id, user, say, events
        self.slot = slot
        self.service_dir = spec.service_path

    async def own_job(self) -> Optional[slurm.Job]:
        try:
            jobs = await self._squeue(job_id=self.job_id)
        except slurm.SlurmUnknown as exc:
            self.say("slurm=unknown query=own-job error=%r", str(exc))
            return None
        return jobs[0] if jobs else None

    async def keep(self, own: Optional[slurm.Job]) -> Optional[str]:
        """The successor's job id once one is queued; None for a stopped chain."""
        delay = 5.0
        while True:
            try:
                if chain.load(self.service_dir).stopped:
                    return None
                family = await self._family()
                self.clean_stale(family)
                if self.slot >= self._replicas():
                    self.say("successor=none reason=%r", "replicas reduced below this slot")
                    return None
                later = [j.job_id for j in family if int(j.job_id) > int(self.job_id)
                         and slots.slot_of(self.spec.job_name, j.name) == self.slot]
                if later:
                    self.say("successor=%s state=queued", ",".join(later))
                    return later[0]
                successor = await self._sbatch(self._dependency(own), self._expected_start(own))
                self.say("successor=%s state=submitted", successor)
                return successor
            except slurm.SlurmUnknown as exc:
                self.say("slurm=unknown action=successor retry_in=%.0fs error=%r", delay, str(exc))
            except OSError as exc:  # the shared home (NFS: ESTALE, EIO): try again, like SLURM
                self.events.note("successor=home-error", f"retry_in={delay:.0f}s {describe(exc)}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 120.0)

    def _replicas(self) -> int:
        """As deployed now: `up` with fewer replicas ends the slots above."""
        try:
            return load_spec(self.service_dir).replicas
        except SpecError:
            return self.spec.replicas

    def _dependency(self, own: Optional[slurm.Job]) -> str:
        limit = own.limit_minutes() if own else None
        if self.spec.overlap_minutes and limit:
            return slurm.after_start(self.job_id, limit - self.spec.overlap_minutes)
        return slurm.after_any(self.job_id)

    async def release(self, keeping: asyncio.Future) -> bool:
        """Let the queued successor start now, not at the next scheduler
        pass; never for a chain that `down` stopped. True once released."""
        if (not keeping.done() or keeping.cancelled() or keeping.exception() is not None
                or not keeping.result() or chain.load(self.service_dir).stopped):
            return False
        successor = keeping.result()
        await self.slurm(slurm.release_argv(successor))
        self.say("successor=%s state=released", successor)
        return True

    async def watch_for_serving(self) -> None:
        """Overlap: returns once a later job serves, and forwarders have had
        drain_seconds to notice it while this job still accepts."""
        while True:
            await asyncio.sleep(OVERLAP_POLL)
            for path in layout.endpoints(self.service_dir).glob("*.json"):
                if not path.stem.isdigit() or int(path.stem) <= int(self.job_id):
                    continue
                try:
                    newer = endpoint.read(path)
                except endpoint.EndpointError:
                    continue
                if newer.state == "serving" and newer.slot == self.slot:
                    self.say("successor=%s state=serving handover_in=%.0fs", newer.job_id,
                             self.spec.drain_seconds)
                    await asyncio.sleep(self.spec.drain_seconds)
                    return

    def clean_stale(self, active: List[slurm.Job]) -> None:
        alive = {j.job_id for j in active} | {self.job_id}
        for path in layout.endpoints(self.service_dir).glob("*.json"):
            # Only job records: a .tmp-*.json is another job's write in flight.
            # Its own job may remove a record first (overlap): no error then.
            if path.stem.isdigit() and path.stem not in alive:
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:  # harmless left behind: readers trust running jobs only
                    self.events.note("record=unremovable", f"job={path.stem} {describe(exc)}")
                    continue
                self.say("record=%s state=removed-stale", path.stem)
        try:
            removed = joblog.prune(layout.logs(self.service_dir), alive)
        except OSError as exc:  # the home (NFS: ESTALE): not worth holding the successor up
            self.events.note("logs=unprunable", describe(exc))
            return
        if removed:
            self.say("logs=pruned count=%d newest=%s oldest=%s", len(removed), removed[0],
                     removed[-1])

    async def _squeue(self, **query) -> List[slurm.Job]:
        rc, out, err = await self.slurm(slurm.squeue_argv(self.user, **query))
        return slurm.interpret_squeue(rc, out, err)

    async def _family(self) -> List[slurm.Job]:
        """Every slot's jobs: a record is stale only when no slot runs its job."""
        return [j for j in await self._squeue()
                if slots.slot_of(self.spec.job_name, j.name) is not None]

    def _expected_start(self, own: Optional[slurm.Job]) -> Optional[float]:
        """About when the successor starts: at this job's warning, or overlap,
        plus the scheduler's lead. --time-min is then decided on the start the
        agent's maintenance decisions assume (maintenance.LEAD): judged at the
        bare warning, a successor whose limit would cross a reservation only
        if it started up to 20 s late went without it, and SLURM holds such a
        job until the maintenance has ended."""
        end = own.end_epoch() if own else None
        ahead = max(self.spec.warn_seconds, self.spec.overlap_minutes * 60)
        return end - ahead + LEAD if end is not None else None

    async def _sbatch(self, dependency: str, start: Optional[float]) -> str:
        # The reservations ahead decide --time-min (slurm.time_min); unknown: none.
        shown, text, _ = await self.slurm(capacity.reservations_argv())
        reservations = capacity.parse_reservations(text) if shown == 0 else []
        rc, out, err = await self.slurm(slurm.sbatch_argv(
            self.spec, dependency, self.script(), slot=self.slot, reservations=reservations,
            start=start))
        return slurm.parse_sbatch(rc, out, err)

    def script(self) -> str:
        try:
            return (Path(self.spec.app_dir) / self.spec.script).read_text()
        except OSError:  # then no --time-min: the job is submitted as before
            return ""

    async def slurm(self, argv: List[str]):
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        except (OSError, asyncio.TimeoutError) as exc:
            return 255, "", f"{argv[0]}: {exc}"
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
