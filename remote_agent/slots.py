"""Replicas: a service runs as N chains ("slots") side by side.

Slot k is a chain of its own (its own successor, its own records) whose
jobs are named after the service's job name: slot 0 keeps the name as it
is (one replica behaves exactly as before), slot k > 0 adds ``+k``. No
service name can contain a '+' (spec.NAME_RE), so no other service's jobs
can look like one of our slots.

Staggering: a busy queue can hold a successor for an hour (seen on the
sandbox: reason Priority, start estimated 70 minutes later). With the
slots' time limits ending at different times, one slot's wait in the
queue is covered by the others; so a slot's first job gets a shortened
limit that puts its end as far as possible from every other slot's.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

SEPARATOR = "+"
# More chains than this is a misuse of a shared cluster, not a service.
MAX_REPLICAS = 16


def job_name(base: str, slot: int) -> str:
    return base if slot == 0 else f"{base}{SEPARATOR}{slot}"


def slot_of(base: str, name: str) -> Optional[int]:
    """Which slot a job of this name belongs to; None for another job."""
    if name == base:
        return 0
    head, sep, tail = name.rpartition(SEPARATOR)
    if sep and head == base and tail.isdigit() and not tail.startswith("0"):
        return int(tail)
    return None


def first_limit(full: int, replicas: int, others_end: Iterable[float]) -> int:
    """The time limit (minutes) of a slot's first job: the longest one whose
    end is furthest from every other slot's rollovers.

    full: the chain's own limit; others_end: minutes from now until each
    other slot's running jobs end. Later rollovers of a slot come every
    `full` minutes, so distances count modulo `full`. The limit is never
    below full / replicas: shorter first jobs buy no more spread.
    """
    ends = [e % full for e in others_end if e > 0]
    if not ends or replicas < 2 or full < 2:
        return full
    shortest = max(1, full // replicas)

    def spread(limit: int) -> float:
        return min(min(abs(limit - e) % full, full - abs(limit - e) % full) for e in ends)
    # Longest first among equals: a longer job means fewer jobs to queue.
    return max(range(shortest, full + 1), key=lambda limit: (spread(limit), limit))


def names(base: str, replicas: int) -> Sequence[str]:
    return [job_name(base, slot) for slot in range(replicas)]
