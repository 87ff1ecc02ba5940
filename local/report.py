"""What `status` shows: the chain job by job, the local forwarder, and
why nothing serves when nothing does. Built from what was read (SLURM's
jobs, the records, the forwarder's status file) by service.status, worded
here; printed as aligned `key  value` lines, or as JSON with --json.

Seen before: `chain 22:PENDING` and nothing more while a successor waited
70 minutes behind other users' jobs, and a URL printed after `down`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from remote_agent import slurm
from remote_agent.endpoint import Endpoint
from remote_agent.slurm import capacity


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


@dataclass
class JobLine:
    """One job of the chain as SLURM and its record describe it."""

    job: str
    state: str
    node: str = "-"
    record: str = "-"             # the agent's: starting, serving, draining
    ends_at: float | None = None
    rollover_at: float | None = None
    reason: str = ""              # SLURM's, for a pending job
    estimated_start: float | None = None
    app: str = ""                 # the hash of the service files its record carries
    slot: int = 0                 # the replica's chain (remote_agent.slots)

    @classmethod
    def of(cls, job: slurm.Job, record: Endpoint | None, overlap_minutes: int,
           warn_seconds: int, slot: int = 0) -> JobLine:
        line = cls(job.job_id, job.state, job.node or "-", record.state if record else "-",
                   app=record.app if record else "", slot=slot)
        if job.running:
            line.ends_at = job.end_epoch()
            if line.ends_at is not None:
                ahead = overlap_minutes * 60 if overlap_minutes else warn_seconds
                line.rollover_at = line.ends_at - ahead
        elif job.pending:
            line.reason = job.reason
            line.estimated_start = job.start_epoch()
        return line

    def describe(self, now: float, slots: bool = False) -> str:
        text = f"slot {self.slot}: " if slots else ""
        text += f"{self.job}:{self.state}"
        if self.node != "-":
            text += f" on {self.node}"
        if self.record != "-":
            text += f", {self.record}"
        if self.ends_at is not None:
            text += f", {duration(self.ends_at - now)} left"
        if self.rollover_at is not None:
            text += (f", next rollover {clock(self.rollover_at)} "
                     f"(in {duration(self.rollover_at - now)})")
        if self.reason:
            text += f", waiting: {self.reason}"
        if self.estimated_start is not None:
            text += f", SLURM expects it to start {clock(self.estimated_start)}"
        if self.app:
            text += f", app {self.app[:12]}"
        return text


@dataclass
class Report:
    service: str
    chain: str
    job: str = "-"
    node: str = "-"
    state: str = "-"
    uptime: str = "-"
    restarts: str = "-"
    url: str = "-"
    forwarder: str = "not running"
    reason: str = "-"
    maintenance: str = "-"
    jobs: list = field(default_factory=list)  # of JobLine

    def text(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        rows = [(k, v) for k, v in asdict(self).items() if k != "jobs"]
        slots = any(job.slot for job in self.jobs)
        jobs = sorted(self.jobs, key=lambda job: (job.slot, int(job.job)))
        lines = [job.describe(now, slots) for job in jobs] or ["none"]
        rows += [("jobs", lines[0])] + [("", line) for line in lines[1:]]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)

    def json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def maintenance(reservations: list[capacity.Reservation]) -> str:
    """A maintenance reservation ahead (7 days) or now: the gap it makes."""
    now = time.time()
    ahead = sorted((r for r in reservations if r.maintenance and now < r.end
                    and r.start < now + 7 * 86400), key=lambda r: r.start)
    return "; ".join(f"{r.name} {clock(r.start)} to {clock(r.end)}: the service has a gap of "
                     f"{duration(r.end - max(r.start, now))} unless its job runs on nodes the "
                     "reservation leaves free (jobs are shortened to end before it)"
                     for r in ahead) or "-"


def local_url(options, local) -> str:
    """Where the running forwarder serves: its own port, which `status`
    without --local-port does not know (it said the default, 8642, for a
    forwarder on another port)."""
    if local is not None and local.local_port and not options.local_socket:
        return f"http://127.0.0.1:{local.local_port}/"
    return options.url


def forwarder_line(pid: int | None, local) -> str:
    """The local forwarder as its pid file and status file tell it."""
    if not pid:
        return "not running"
    if local is None or pid not in (local.pid, local.supervisor):
        return f"pid {pid}"
    worker = f" (worker pid {local.pid}, restarted by its supervisor)" if local.supervisor else ""
    return (f"pid {pid} {local.state} since {clock(local.since)}, port {local.local_port}, "
            f"{local.switches} switches{worker}")


def reason(home, local) -> str:
    """Why it does not serve, when it does not: never an empty answer."""
    if home is not None and not home.writable:
        return home.describe()
    if local is not None and local.state != "serving" and local.message:
        return local.message
    return "-"


def age(since: float) -> str:
    return duration(time.time() - since)
