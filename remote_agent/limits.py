"""File descriptors: raise the soft limit, and keep a reserve.

A relayed connection costs two descriptors (client and server side). The
sandbox's nodes give a job a soft limit of 1024 (hard 20000): about 510
connections, after which accept() fails with EMFILE, and so does the
agent's next mkstemp for its record or the pipe of its successor's sbatch.
So every process of ours raises its soft limit to the hard one at start,
and admits a connection only while RESERVE descriptors stay free for its
own work (records, log, health checks, sbatch's pipes, a server restart).
"""

from __future__ import annotations

import os
import resource
from typing import Tuple

# Records, log, health probes, a restart, sbatch with its three pipes, the
# reverse ssh: the agent has been seen to use up to ~30 at once beside its
# connections; four times that, so no burst of work ever meets EMFILE.
RESERVE = 128


def raise_nofile() -> Tuple[int, int, int]:
    """Soft limit up to the hard one: (soft before, soft now, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
    return soft, target, hard


def open_descriptors() -> int:
    """How many this process holds now (one look at /proc, O(n): call rarely)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 64  # no /proc: a generous guess at a process's own files


class Budget:
    """How many more connections fit while RESERVE descriptors stay free.

    Counting is the caller's (it knows what it holds); the baseline is the
    process's other descriptors when counting began.
    """

    def __init__(self, limit: int, baseline: int, reserve: int = RESERVE):
        self.limit, self.baseline, self.reserve = limit, baseline, reserve

    @classmethod
    def of_this_process(cls) -> Budget:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return cls(soft, open_descriptors())

    def room(self, in_use: int, wanted: int = 2) -> bool:
        """May `wanted` more descriptors be taken when `in_use` are held?"""
        return self.baseline + in_use + wanted <= self.limit - self.reserve

    @property
    def connections(self) -> int:
        """Relayed connections (two descriptors each) that fit in all."""
        return max(0, (self.limit - self.reserve - self.baseline) // 2)
