"""What the cluster offers, as SLURM prints it: partitions and their
MaxTime, nodes with free CPUs now, and reservations ahead (maintenance).
Read by `doctor`, by `status` and when replicas are spread over nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from . import parse_duration_minutes, parse_timestamp


def partitions_argv() -> List[str]:
    return ["sinfo", "--noheader", "--format=%P|%l"]


def parse_partitions(text: str) -> Dict[str, Optional[int]]:
    """Partition -> MaxTime in minutes (None: UNLIMITED); the default's '*' dropped."""
    limits: Dict[str, Optional[int]] = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        name, _, limit = line.strip().partition("|")
        limits[name.rstrip("*")] = parse_duration_minutes(limit)
    return limits


def nodes_argv(partition: Optional[str] = None) -> List[str]:
    return ["sinfo", "--noheader", "--Node", "--format=%N|%C|%t",
            *([f"--partition={partition}"] if partition else [])]


def parse_idle_cpus(text: str) -> Dict[str, int]:
    """Node -> idle CPUs, for nodes that take jobs now: idle or mixed, with
    no suffix (not responding '*', powered off '~', reserved '$', ...)."""
    idle: Dict[str, int] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3 or parts[1].count("/") != 3:
            continue
        node, cpus, state = parts
        counts = cpus.split("/")
        if state in ("idle", "mix") and counts[1].isdigit():
            idle[node] = int(counts[1])
    return idle


def default_partition(text: str) -> Optional[str]:
    return next((line.split("|")[0].rstrip("*") for line in text.splitlines()
                 if line.split("|")[0].endswith("*")), None)


def reservations_argv() -> List[str]:
    return ["scontrol", "--oneliner", "show", "reservation"]


@dataclass(frozen=True)
class Reservation:
    name: str
    start: float
    end: float
    flags: str

    @property
    def maintenance(self) -> bool:
        return "MAINT" in self.flags.split(",")


def parse_reservations(text: str) -> List[Reservation]:
    """`scontrol --oneliner show reservation`: one reservation a line, key=value."""
    found = []
    for line in text.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        start = parse_timestamp(fields.get("StartTime", ""))
        end = parse_timestamp(fields.get("EndTime", ""))
        if "ReservationName" in fields and start is not None and end is not None:
            found.append(Reservation(fields["ReservationName"], start, end,
                                     fields.get("Flags", "")))
    return found


def maintenance_ahead(reservations: Sequence[Reservation], start: float,
                      minutes: int) -> Optional[Reservation]:
    """The first maintenance reservation that a job starting at `start`
    cannot run `minutes` before (it starts too soon, or is under way): with
    --time-min that job waits until the reservation has ended."""
    blocking = [r for r in reservations
                if r.maintenance and r.end > start and r.start < start + minutes * 60]
    return min(blocking, key=lambda r: r.start) if blocking else None


def early_release(reservations: Sequence[Reservation], warning: float, minutes: int,
                  lead: float) -> Optional[float]:
    """When to release the successor, instead of at this job's time-limit
    warning, so that it starts early enough to run its `minutes` before the
    maintenance that a successor released at `warning` would wait behind;
    `lead` is the scheduler's time to start a released job. None: no such
    maintenance, or it has begun by then. The successor released at the
    warning is taken to start `lead` later, as the agent does at the warning
    (Maintenance.serves_to_end): judged at the bare warning, a reservation
    94 s after the job's end (90 s warning) needed no early release here,
    yet was too close at the warning, and the service was down from the
    job's end to the end of the maintenance (CI, 2026-12-05)."""
    ahead = maintenance_ahead(reservations, warning + lead, minutes)
    if ahead is None or ahead.start <= warning:
        return None
    return ahead.start - minutes * 60 - lead
