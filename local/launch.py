"""Starting a service's chains: one per slot (remote_agent.slots), only
when SLURM says for certain that the slot has no job, under the service
dir's lock so that concurrent `up`s start one chain per slot. A slot's
first job is staggered (its limit) and spread (kept off the other
replicas' nodes while another node has room).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from remote_agent import slots, slurm
from remote_agent.lock import WAIT as LOCK_WAIT
from remote_agent.slurm import capacity
from remote_agent.spec import Spec

from .remote import COMMAND_TIMEOUT, ClusterError

if TYPE_CHECKING:
    from .cluster import Chain

log = logging.getLogger("slurm_persist.launch")

# Replicas started together: how long to wait for one to get its node, so
# the next keeps off it (on the sandbox a job starts 1-2 s after sbatch).
SPREAD_WAIT = 10.0


class SubmitUnknown(slurm.SlurmUnknown):
    """sbatch was cut off: the chain may or may not have been submitted."""


def _staggered(spec: Spec, script: str, ends: list[float]) -> int | None:
    """A slot's first --time, put among the other slots' ends (minutes from
    now, this one's added); None for the script's own limit."""
    full = slurm.requested_minutes(spec.sbatch_options, script)
    if not full or spec.replicas < 2:
        return None
    limit = slots.first_limit(full, spec.replicas, ends)
    ends.append(limit)
    return None if limit == full else limit


def minutes_to_end(jobs: list[slurm.Job]) -> list[float]:
    """Minutes from now until each running job's end, where SLURM knows it."""
    now = time.time()
    return [(e - now) / 60 for e in (j.end_epoch() for j in jobs if j.running) if e]


class Launch:
    def __init__(self, chain: Chain):
        self.chain, self.options = chain, chain.options
        self._reservations: list[capacity.Reservation] | None = None

    def ensure(self, only: list[int] | None = None) -> tuple[str, bool]:
        """The chain's oldest active job, starting a chain only when SLURM
        says for certain that none exists (SlurmUnknown propagates). Under
        the service dir's lock, so that concurrent `up`s start one chain."""
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # The lock waits up to LOCK_WAIT for another up: the command may too.
        locked = self.chain.agent("lock", owner, timeout=LOCK_WAIT + COMMAND_TIMEOUT)
        if locked.returncode == 3:
            raise ClusterError(f"another `up` of {self.options.name} held its lock on the "
                               f"cluster for 60 s; try again")
        if locked.returncode != 0:
            said = locked.stderr.strip().splitlines()[-1:] or [f"exit {locked.returncode}"]
            raise ClusterError(f"taking the lock of {self.options.name} on the cluster "
                               f"failed: {said[0][:300]}")
        try:
            found = self._find_or_start(only)
        except SubmitUnknown:
            # That sbatch may still go through: the lock is left to go stale
            # (lock.STALE, 120 s) rather than let another up submit meanwhile.
            log.warning("service=%s state=lock-kept reason=%r", self.options.name,
                        "sbatch gave no answer; the lock goes stale in 2 minutes")
            raise
        except BaseException:
            self.chain.agent("unlock", owner)
            raise
        self.chain.agent("unlock", owner)
        return found

    def _find_or_start(self, only: list[int] | None) -> tuple[str, bool]:
        """Every slot up to the replica count (or those of `only`) gets a
        chain; slots above it are cancelled (`up` with fewer replicas)."""
        jobs = self.chain.jobs()
        extra = [j.job_id for j in jobs if (self.chain.slot(j) or 0) >= self.options.replicas]
        if extra:
            log.info("service=%s jobs=%s state=cancelled reason=%r", self.options.name,
                     ",".join(extra), f"replicas = {self.options.replicas}")
            self.chain.run_slurm(slurm.scancel_argv(extra))
        wanting = sorted(set(range(self.options.replicas) if only is None else only)
                         - {self.chain.slot(j) for j in jobs})
        if not wanting:
            log.info("service=%s job=%s state=chain-found", self.options.name, jobs[0].job_id)
            return jobs[0].job_id, False
        if not jobs:  # a new chain: the last one's stop mark and failure count go
            self.chain.agent("reset")
        ends = minutes_to_end(jobs)
        taken = {j.node for j in jobs if j.running and j.node}
        started = []
        for slot in wanting:
            started.append(self.start_slot(slot, ends, self._spread(taken)))
            if slot != wanting[-1]:
                taken |= self._node_soon(started[-1])
        return (jobs[0].job_id if jobs else started[0]), True

    def _spread(self, taken: set[str]) -> list[str]:
        """Nodes to keep a slot's first job off: the other replicas', as long
        as another node has a free CPU now. A preference, never a wait: with
        no free node elsewhere, the job goes where SLURM puts it."""
        options, script = self.options.sbatch_options, self._script()
        if not taken or any(slurm.requested(options, script, o) for o in ("exclude", "nodelist")):
            return []
        partition = slurm.requested(options, script, "partition")
        shown = self.chain.run_slurm(capacity.nodes_argv(partition))
        idle = capacity.parse_idle_cpus(shown.stdout) if shown.returncode == 0 else {}
        need = int(slurm.requested(options, script, "cpus-per-task") or 1)
        return sorted(taken) if any(n not in taken and c >= need for n, c in idle.items()) else []

    def _node_soon(self, job_id: str) -> set[str]:
        """The node a just-submitted job starts on, if it starts within
        SPREAD_WAIT (the next slot keeps off it); else none."""
        deadline = time.monotonic() + SPREAD_WAIT
        while time.monotonic() < deadline:
            try:
                job = self.chain.ended(job_id)
            except slurm.SlurmUnknown:
                return set()
            if job is not None and job.running and job.node:
                return {job.node}
            time.sleep(1)
        return set()

    def _reservations_ahead(self) -> list[capacity.Reservation]:
        """For --time-min; read once for all the slots started together."""
        if self._reservations is None:
            shown = self.chain.run_slurm(capacity.reservations_argv())
            self._reservations = (capacity.parse_reservations(shown.stdout)
                                  if shown.returncode == 0 else [])
        return self._reservations

    def _script(self) -> str:
        script = Path(self.options.app_dir) / "slurm.sbatch"
        return script.read_text() if script.is_file() else ""

    def start_slot(self, slot: int, ends: list[float], exclude: list[str]) -> str:
        """sbatch a slot's first job, its limit staggered against the other
        slots' ends (minutes from now; this slot's is added to them)."""
        text, spec = self._script(), self.chain.spec()
        limit = _staggered(spec, text, ends)
        result = self.chain.run_slurm(slurm.sbatch_argv(spec, script=text, slot=slot, limit=limit,
                                                    exclude=exclude,
                                                    reservations=self._reservations_ahead()),
                                     once=True)
        try:
            job_id = slurm.parse_sbatch(result.returncode, result.stdout, result.stderr)
        except slurm.SlurmUnknown as exc:
            if result.unanswered:  # it may have gone through
                raise SubmitUnknown(str(exc)) from None
            raise
        log.info("service=%s job=%s slot=%d limit=%s exclude=%s state=chain-started",
                 self.options.name, job_id, slot, f"{limit}min" if limit else "full",
                 ",".join(exclude) or "-")
        return job_id
