"""What the cluster offers, as SLURM prints it: partitions and their
MaxTime, nodes with free CPUs now, and reservations ahead (maintenance).
Read by `doctor`, by `status` and when replicas are spread over nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

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
