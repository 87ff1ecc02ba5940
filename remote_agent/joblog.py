"""The job log (SLURM's output file in the shared home), bounded whatever happens.

Seen on the sandbox: an accept() failing in a loop wrote 660,835 lines
(260 MB) in 90 s and filled a small home, which then broke the next
rollover. Two bounds keep that from happening again:

- :class:`Summariser`: an event that repeats is printed once in full, then
  counted, and one line per window says how many (``gate=reject
  count=4950 window=10s``). While the event keeps coming that is one line
  per window, whatever its rate.
- :class:`Capped`: a byte budget per writer (the agent's own lines, the
  server's output); past it, bytes are dropped and counted, and one line
  says so. A write the file system refuses (ENOSPC) is counted, never raised.

And the logs of ended jobs do not pile up over months of rollovers:
:func:`prune` keeps the newest few for `slurm-persist logs --job`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Callable, Collection, Dict, List

WINDOW = 10.0
# A healthy job writes a few KB of its own lines a day; 5 MB is years of
# that and still small in a shared home.
AGENT_CAP = 5 * 1024 * 1024
# The user's server: generous for a chatty model server, finite for a loop.
SERVER_CAP = 50 * 1024 * 1024
# Ended jobs' logs kept: a daily rollover's 20 days, or 10 with two
# replicas; and at most 256 MB of them (the newest is kept whatever its
# size: the predecessor's, the one read when something went wrong).
KEEP_LOGS = 20
KEEP_BYTES = 256 * 1024 * 1024


class Summariser:
    """Bounded logging of repeated events, keyed by their greppable text."""

    def __init__(self, emit: Callable[[str], None], window: float = WINDOW,
                 clock: Callable[[], float] = time.monotonic):
        self._emit, self.window, self._clock = emit, window, clock
        self._started: Dict[str, float] = {}
        self._counts: Dict[str, int] = {}

    def note(self, event: str, detail: str = "") -> None:
        """The first of a quiet spell is printed with its detail; the rest counted."""
        if event in self._started:
            self._counts[event] += 1
            return
        self._started[event] = self._clock()
        self._counts[event] = 0
        self._emit(f"{event} {detail}".rstrip())

    def flush(self) -> None:
        """Say how many came in each window that has ended; forget quiet events."""
        now = self._clock()
        for event, started in list(self._started.items()):
            if now - started < self.window:
                continue
            count = self._counts[event]
            if count:
                self._emit(f"{event} count={count} window={self.window:.0f}s")
                self._started[event], self._counts[event] = now, 0
            else:
                del self._started[event], self._counts[event]

    def pending(self) -> int:
        return sum(self._counts.values())


async def flush_every(events: Summariser) -> None:
    """Run for a process's life: the summaries of each window, on time."""
    while True:
        await asyncio.sleep(events.window)
        events.flush()


async def copy_output(stream: asyncio.StreamReader, out: Capped) -> None:
    """A child's output into a Capped writer, until the child closes it."""
    while True:
        data = await stream.read(1 << 16)
        if not data:
            return
        out.write(data)


def write_fd(fd: int) -> Callable[[bytes], None]:
    def sink(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    return sink


class Capped:
    """Passes bytes to sink until cap; then drops them and counts."""

    def __init__(self, sink: Callable[[bytes], None], cap: int, name: str):
        self._sink, self.cap, self.name = sink, cap, name
        self.written = 0
        self.dropped = 0
        self.failed = 0

    def write(self, data: bytes) -> None:
        if self.written + len(data) > self.cap:
            if not self.dropped:
                self._put(f"log={self.name} state=capped cap={self.cap} "
                          "further output dropped and counted\n".encode())
            self.dropped += len(data)
            return
        if self._put(data):
            self.written += len(data)

    def _put(self, data: bytes) -> bool:
        try:
            self._sink(data)
            return True
        except OSError:  # a full home: the job goes on, the bytes are counted
            self.failed += len(data)
            return False


class CappedHandler(logging.Handler):
    """The agent's own log lines, through a Capped writer."""

    def __init__(self, capped: Capped):
        super().__init__()
        self.capped = capped

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:  # a bad format string must not end the job
            line = f"log=unformattable message={record.msg!r}\n"
        self.capped.write(line.encode("utf-8", "replace"))


def prune(folder: Path, alive: Collection[str], keep: int = KEEP_LOGS,
          keep_bytes: int = KEEP_BYTES) -> List[str]:
    """Remove the logs of ended jobs (<job>.out, not in alive) past the
    newest keep, or past keep_bytes of them; the job ids removed, newest
    first. Newest by the last write, not the job id: ids start again from
    1 past SLURM's MaxJobId (67,043,328 by default): in about four months
    at half a million jobs a day. A log that cannot be removed stays: the next
    job tries again."""
    ended = []
    for path in folder.glob("*.out"):
        if path.stem.isdigit() and path.stem not in alive:
            try:
                ended.append((path.stat(), path))
            except OSError:  # gone meanwhile
                continue
    ended.sort(key=lambda found: found[0].st_mtime, reverse=True)
    kept_bytes, removed = 0, []
    for index, (stat, path) in enumerate(ended):
        kept_bytes += stat.st_size
        if index == 0 or (index < keep and kept_bytes <= keep_bytes):
            continue
        try:
            path.unlink()
        except OSError:  # gone meanwhile, or the home refuses: harmless either way
            continue
        removed.append(path.stem)
    return removed
