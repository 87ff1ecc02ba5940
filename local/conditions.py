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
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from remote_agent import slurm

if TYPE_CHECKING:
    from .cluster import Chain
    from .config import Options
    from .hooks import Hooks

log = logging.getLogger("slurm_persist.conditions")

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
    free_bytes: int | None = None

    @classmethod
    def parse(cls, data: dict) -> Home:
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


def judge(home: Home | None, job: slurm.Job | None, said: str) -> Verdict:
    """home: the write check (None if it could not run); job: SLURM's last
    record of the chain's job (None once forgotten); said: its log's tail."""
    if home is not None and not home.writable:
        return Verdict(True, home.describe(), home=True)
    if job is not None and job.state in slurm.CLUSTER_END_STATES:
        return Verdict(True, f"job {job.job_id} ended {job.state} on {job.node or '?'} "
                             f"(a cluster failure, not the service's)")
    return Verdict(False, said)


@dataclass
class Served:
    """Whether the service has served: what recovery decides by."""

    attempts: int = 0              # recoveries since the forwarder started
    ever: bool = False             # a route answered once, since the start
    since_chain_start: bool = False  # ... since the last chain started here
    unserved_chains: int = 0       # chains in a row that ended without serving

    def served(self) -> None:
        self.ever = self.since_chain_start = True
        self.unserved_chains = 0


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

    def __init__(self, chain: Chain):
        self.chain = chain
        self.backoff = Backoff()

    def why_unserved(self, job: str | None) -> Verdict:
        if job is None:
            return Verdict(False, "")
        return judge(self.chain.home(), self.chain.ended(job), self.log_tail(job))

    def log_tail(self, job: str) -> str:
        tail = self.chain.site.run(["tail", "-n", "3", self.chain.log_path(job)])
        if tail.returncode != 0:
            return "no output file: SLURM could not start it"
        return (" | ".join(tail.stdout.strip().splitlines())
                or "its output file is empty: it ended before printing anything")

    def home_problem(self) -> str | None:
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


class ChainStopped(Exception):
    """The chain was stopped (by down or the crash-loop guard): nothing to follow."""


class Starter:
    """SLURM says for certain that no job is left: start a chain, unless the
    last ones ended without serving. Jobs that die before their agent runs
    (a broken sbatch script, an option SLURM refuses at run time) escape the
    agent's crash-loop guard and would otherwise be replaced every few
    seconds, for ever. A chain the cluster ended (a full home, a failed
    node) is no fault of the service: waited out."""

    def __init__(self, options: Options, chain: Chain, served: Served, hooks: Hooks):
        self.options, self.chain, self.served, self.hooks = options, chain, served, hooks
        self.conditions = Conditions(chain)
        self.started_job: str | None = None  # the last chain started here

    async def start(self, set_status) -> None:
        if not self.served.since_chain_start:
            verdict = await asyncio.to_thread(self.conditions.why_unserved, self.started_job)
            if verdict.cluster:
                await self._wait_out(verdict, set_status)
            else:
                self.served.unserved_chains += 1
            if self.served.unserved_chains >= self.options.crash_loop_jobs:
                reason = (f"{self.served.unserved_chains} chains in a row ended without serving; "
                          f"not starting another. The last, job {self.started_job}: "
                          f"{verdict.reason}")
                set_status("stopped", reason)
                log.error("service=%s state=chain-not-restarted reason=%r", self.options.name,
                          reason)
                self.hooks.emit("chain-stopped", reason=reason)
                raise ChainStopped(reason)
        self.started_job, _ = await asyncio.to_thread(self.chain.ensure)
        self.served.since_chain_start = False

    async def _wait_out(self, verdict: Verdict, set_status) -> None:
        delay = self.conditions.backoff.next()
        set_status("waiting", f"cluster condition: {verdict.reason}; next chain in {delay:.0f} s")
        log.warning("service=%s state=cluster-condition retry_in=%.0fs reason=%r",
                    self.options.name, delay, verdict.reason)
        await self.conditions.wait_out(delay, verdict)
