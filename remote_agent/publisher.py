"""Writing what a job must tell the shared home, without dying of it.

The shared home fills up, hits a quota or hangs on a broken NFS server
while the job itself is fine. Seen on the sandbox: an ENOSPC in the write
of a record killed a serving agent, and with it the service. Here a record
that cannot be written is kept in memory, said once per window (``record=
unwritable error=ENOSPC path=...``) and written again every RETRY seconds
until it goes through; the latest state wins. The job serves meanwhile;
forwarders keep the route they have, and find a new job once its record lands.
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Optional

from . import chain, endpoint
from .endpoint import Endpoint
from .joblog import Summariser

RETRY = 5.0


def describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "EIO")
    where = f" path={exc.filename}" if exc.filename else ""
    return f"error={name}{where}"


class Publisher:
    def __init__(self, service_dir: Path, events: Summariser):
        self.service_dir = service_dir
        self._events = events
        self._unwritten: Optional[Endpoint] = None
        self._retry: Optional[asyncio.Future] = None
        self.failures = 0

    def publish(self, record: Endpoint) -> None:
        """Write now if the home lets us; else keep it and keep trying."""
        self._unwritten = record
        if not self._write():
            if self._retry is None or self._retry.done():
                self._retry = asyncio.ensure_future(self._retry_until_written())

    @property
    def pending(self) -> bool:
        return self._unwritten is not None

    def _write(self) -> bool:
        record = self._unwritten
        if record is None:
            return True
        try:
            endpoint.write(self.service_dir, record)
        except OSError as exc:
            self.failures += 1
            self._events.note("record=unwritable", f"job={record.job_id} {describe(exc)}")
            return False
        if self.failures:
            self._events.note("record=written", f"job={record.job_id} state={record.state} "
                              f"after_failures={self.failures}")
            self.failures = 0
        self._unwritten = None
        return True

    async def _retry_until_written(self) -> None:
        while not self._write():  # noqa: ASYNC110 - a retry of a write, not a wait for an event
            await asyncio.sleep(RETRY)

    def remove(self, job_id: str) -> None:
        """The job ends: stop retrying, and take its record away if we can."""
        self.close()
        try:
            endpoint.remove(self.service_dir, job_id)
        except OSError as exc:
            self._events.note("record=unremovable", f"job={job_id} {describe(exc)}")

    def close(self) -> None:
        self._unwritten = None
        if self._retry is not None:
            self._retry.cancel()

    def save_chain(self, state: chain.ChainState) -> bool:
        """The chain state, once; False (said) when the home refused it."""
        try:
            chain.save(self.service_dir, state)
            return True
        except OSError as exc:
            self._events.note("chain=unwritable", describe(exc))
            return False
