"""A maintenance reservation ahead: the last jobs before it serve up to it.

A job whose limit would cross one carries --time-min (remote_agent.slurm.
time_min), and SLURM starts it with that limit. Two things still left a gap
before the maintenance, seen on the sandbox with 5-minute jobs (a 3-minute
floor) and a reservation 10 minutes ahead:

- a successor released at this job's time-limit warning that cannot run
  its floor before the reservation waits behind it, and without overlap
  this job stopped serving at the warning: the service was down from then,
  minutes before the maintenance began. Such a job now serves on to the
  end of its own limit (``serves_to_end``).
- ending at the limit still left up to a floor of minutes idle before the
  reservation. This job instead releases its successor early, at the last
  moment it can still start with its floor before the reservation, and
  hands over once it serves (``watch``); that successor ends just before
  the reservation.

Without overlap only: with overlap the successor is due early anyway.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, List, Optional, Tuple

from .slurm import capacity

# Seconds a released successor takes to start: a scheduler pass (1 s on the
# sandbox, bf_interval=5; 30 s by default). Releasing this much before the
# last moment keeps the successor in front of the reservation.
LEAD = 20.0
# How often to look at the reservations while none concerns this job.
CHECK_EVERY = 300.0

Slurm = Callable[[List[str]], Awaitable[Tuple[int, str, str]]]


class Maintenance:
    def __init__(self, shortest: Optional[int], ends_at: Optional[float], warn_seconds: int,
                 run: Slurm, say: Callable[..., None]):
        """shortest: the chain's --time-min in minutes (None: not used, nothing to do)."""
        self.shortest, self.ends_at, self.warn_seconds = shortest, ends_at, warn_seconds
        self.run, self.say = run, say
        self.reservations: List[capacity.Reservation] = []
        # A job that began after the release time is itself such a successor:
        # its own successor, released now, would get no more (seen: a cascade
        # of three jobs released within 10 s, each ending a few s later).
        self.began = time.time()

    async def refresh(self) -> None:
        """The reservations as SLURM shows them; on a failed query, the last ones."""
        rc, out, _ = await self.run(capacity.reservations_argv())
        if rc == 0:
            self.reservations = capacity.parse_reservations(out)

    def serves_to_end(self, now: Optional[float] = None) -> Optional[capacity.Reservation]:
        """At the time-limit warning: the maintenance a successor released
        now would wait behind (then keep serving), or None."""
        if self.shortest is None:
            return None
        # The same start early_release assumed: where it saw no need to
        # release early, the successor released now fits.
        start = (time.time() if now is None else now) + LEAD
        return capacity.maintenance_ahead(self.reservations, start, self.shortest)

    async def watch(self, release: Callable[[], Awaitable[bool]],
                    serving: Callable[[], Awaitable[None]]) -> None:
        """Returns once the successor, released early for a maintenance, serves;
        otherwise never. release() says whether there was one to release."""
        if self.shortest is None or self.ends_at is None:
            await asyncio.Event().wait()
        assert self.shortest is not None and self.ends_at is not None
        while True:
            await self.refresh()
            at = capacity.early_release(self.reservations, self.ends_at - self.warn_seconds,
                                        self.shortest, LEAD)
            now = time.time()
            if at is not None and self.began < at <= now <= at + LEAD - 5.0:
                if await release():
                    self.say("state=successor-released reason=maintenance-ahead")
                    await serving()
                    return
                wait = 2.0  # the successor's sbatch is still under way
            elif at is not None and self.began < at and now < at:
                wait = min(CHECK_EVERY, at - now)
            else:
                wait = CHECK_EVERY
            await asyncio.sleep(max(wait, 1.0))
