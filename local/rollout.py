"""`rollout`: new code to every slot, with no downtime.

Slot by slot, a new job starts beside the running one with the files just
deployed. Once it serves, the old job's queued successor is cancelled (the
new job keeps one of its own), forwarders get drain_seconds to move over
(as in an overlap handover), and the old job drains its connections and
ends. With one replica this is a blue-green switch. A new job that ends
without serving, or a rollout interrupted before it serves, is cancelled
with its successor, and the old jobs are left serving as they were.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from remote_agent import slurm

from .cluster import Chain
from .config import ConfigError, Options
from .deploy import deploy as deploy_files
from .launch import Launch, minutes_to_end
from .remote import ClusterError

POLL = 2.0
# Progress while a new job waits (in the queue, or for its health check).
SAY_EVERY = 15.0


class Rollout:
    def __init__(self, chain: Chain, say: Callable[[str], None]):
        self.chain, self.say = chain, say
        self.spec = chain.spec()

    def run(self) -> list[str]:
        if not self.chain.jobs():
            raise ClusterError(f"{self.spec.name} has no job to replace: `slurm-persist up` "
                               "starts it with the deployed files")
        return [self._slot(slot) for slot in range(self.spec.replicas)]

    def _slot(self, slot: int) -> str:
        jobs = self.chain.jobs()
        old = [j for j in jobs if self.chain.slot(j) == slot]
        ends = minutes_to_end([j for j in jobs if self.chain.slot(j) != slot])
        new = Launch(self.chain).start_slot(slot, ends, exclude=[])
        self.say(f"slot {slot}: job {new} started beside "
                 f"{', '.join(j.job_id for j in old) or 'no job'}")
        try:
            self._until_serving(slot, new)
        except BaseException:
            self._cancel_from(slot, new)
            raise
        if old:
            pending = [j.job_id for j in old if not j.running]
            if pending:
                self.chain.run_slurm(slurm.scancel_argv(pending))
            self.say(f"slot {slot}: job {new} serves; job(s) {', '.join(j.job_id for j in old)} "
                     f"drain in {self.spec.drain_seconds:.0f} s")
            time.sleep(self.spec.drain_seconds)
            for job in old:
                if job.running:
                    self.chain.run_slurm(slurm.drain_argv(job.job_id))
            self._until_gone([j.job_id for j in old])
        return f"slot {slot}: job {new} serving the new files ({self.spec.app or 'not copied'})"

    def _until_serving(self, slot: int, job_id: str) -> None:
        said = 0.0
        while True:
            job = next((j for j in self.chain.jobs() if j.job_id == job_id), None)
            record = self.chain.snapshot().endpoints.get(job_id)
            if job is None or (record is not None and record.state == "stopped"):
                raise ClusterError(f"slot {slot}: job {job_id} ended without serving; the old "
                                   f"jobs serve on. See: slurm-persist logs --job {job_id}")
            if job.running and record is not None and record.state == "serving":
                return
            if time.monotonic() - said > SAY_EVERY:
                said = time.monotonic()
                where = (f"running on {job.node}, {record.state if record else 'starting'}"
                         if job.running else f"pending ({job.reason})")
                self.say(f"slot {slot}: job {job_id} {where}")
            time.sleep(POLL)

    def _until_gone(self, job_ids: list[str]) -> None:
        """The old jobs end once drained; cancelled outright if they outstay that."""
        deadline = time.monotonic() + self.spec.drain_seconds + 60
        left = set(job_ids)
        while left and time.monotonic() < deadline:
            time.sleep(POLL)
            left &= {j.job_id for j in self.chain.jobs()}
        if left:
            self.chain.run_slurm(slurm.scancel_argv(sorted(left)))

    def _cancel_from(self, slot: int, job_id: str) -> None:
        """The new job and the successor it may have queued."""
        doomed = [j.job_id for j in self.chain.jobs()
                  if self.chain.slot(j) == slot and int(j.job_id) >= int(job_id)]
        if doomed:
            self.chain.run_slurm(slurm.scancel_argv(doomed))
            self.say(f"slot {slot}: cancelled job(s) {', '.join(doomed)}")


def rollout(options: Options, connected) -> str:
    """Deploy the service's files, then roll every slot over to them."""
    if not options.copy:
        raise ConfigError("rollout deploys the service folder: drop --no-copy")
    with connected(options) as chain:
        report = deploy_files(chain, Path(options.app_dir))
        print(f"{options.name}: deployed, {report.sent} files sent, {report.unchanged} unchanged",
              flush=True)
        lines = Rollout(chain, lambda line: print(f"{options.name}: {line}", flush=True)).run()
    return "\n".join(f"{options.name}: {line}" for line in lines)
