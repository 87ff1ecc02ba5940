"""Why a chain ended without serving: the cluster, or the service?

Seen on the sandbox: with the home full, a successor and three new chains
died within a second with empty logs, the crash-loop guard took that for a
broken service, and the service stayed down after the space was freed. A
cluster condition passes by itself, so it is waited out with backoff
(1, 2, 4 ... 1800 s between new chains) and named in `status`; only a
chain that ended for the service's own reasons counts towards the guard.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from remote_agent import slurm

if TYPE_CHECKING:
    from .cluster import Chain

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 1800.0
# While a full home keeps jobs from serving, look at it again this often.
HOME_RECHECK = 15.0


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
    home: bool = False  # the home was full: over as soon as it is writable


def judge(home: Optional[Home], job: Optional[slurm.Job], said: str) -> Verdict:
    """home: the write check (None if it could not run); job: SLURM's last
    record of the chain's job (None once forgotten); said: its log's tail."""
    if home is not None and not home.writable:
        return Verdict(True, home.describe(), home=True)
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


class Conditions:
    """Asks the cluster why a chain ended unserved, and waits it out."""

    def __init__(self, chain: "Chain"):
        self.chain = chain
        self.backoff = Backoff()

    def why_unserved(self, job: Optional[str]) -> Verdict:
        if job is None:
            return Verdict(False, "")
        return judge(self.chain.home(), self.chain.ended(job), self.log_tail(job))

    def log_tail(self, job: str) -> str:
        tail = self.chain.site.run(["tail", "-n", "3", self.chain.log_path(job)])
        if tail.returncode != 0:
            return "no output file: SLURM could not start it"
        return (" | ".join(tail.stdout.strip().splitlines())
                or "its output file is empty: it ended before printing anything")

    def home_problem(self) -> Optional[str]:
        home = self.chain.home()
        return home.describe() if home is not None and not home.writable else None

    async def wait_out(self, delay: float, verdict: Verdict) -> None:
        """Sleep delay; for a full home, its being writable again ends it early."""
        deadline = time.monotonic() + delay
        if not verdict.home:
            await asyncio.sleep(delay)
            return
        while time.monotonic() < deadline:
            await asyncio.sleep(min(HOME_RECHECK, deadline - time.monotonic()))
            home = await asyncio.to_thread(self.chain.home)
            if home is not None and home.writable:
                return
