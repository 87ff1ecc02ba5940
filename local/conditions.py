"""Why a chain ended without serving: the cluster, or the service?

Seen on the sandbox: with the home full, a successor and three new chains
died within a second with empty logs, the crash-loop guard took that for a
broken service, and the service stayed down after the space was freed. A
cluster condition passes by itself, so it is waited out with backoff
(1, 2, 4 ... 1800 s between new chains) and named in `status`; only a
chain that ended for the service's own reasons counts towards the guard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from remote_agent import slurm

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 1800.0


@dataclass(frozen=True)
class Home:
    """What `python3 -m remote_agent check` says of the service dir."""

    writable: bool
    error: str = ""
    path: str = ""
    free_bytes: Optional[int] = None

    @classmethod
    def parse(cls, data: dict) -> "Home":
        free = data.get("free_bytes")
        return cls(bool(data.get("writable")), str(data.get("error", "")),
                   str(data.get("path", "")), free if isinstance(free, int) else None)

    def describe(self) -> str:
        free = f", {self.free_bytes} bytes free" if self.free_bytes is not None else ""
        return f"home not writable: {self.error or 'refused'} in {self.path}{free}"


@dataclass(frozen=True)
class Verdict:
    cluster: bool  # True: wait it out; False: the service's fault, counted
    reason: str


def judge(home: Optional[Home], job: Optional[slurm.Job], said: str) -> Verdict:
    """home: the write check (None if it could not run); job: SLURM's last
    record of the chain's job (None once forgotten); said: its log's tail."""
    if home is not None and not home.writable:
        return Verdict(True, home.describe())
    if job is not None and job.state in slurm.CLUSTER_END_STATES:
        return Verdict(True, f"job {job.job_id} ended {job.state} on {job.node or '?'} "
                             f"(a cluster failure, not the service's)")
    return Verdict(False, said)


class Backoff:
    """1, 2, 4 ... up to BACKOFF_MAX seconds; back to the start once served."""

    def __init__(self, first: float = BACKOFF_FIRST, cap: float = BACKOFF_MAX):
        self.first, self.cap = first, cap
        self.tries = 0

    def next(self) -> float:
        delay = min(self.first * 2 ** self.tries, self.cap)
        self.tries += 1
        return delay

    def reset(self) -> None:
        self.tries = 0
