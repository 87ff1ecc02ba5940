"""Event hooks: tell someone when the service changes, without a shell.

`on_event` names a command (split like a shell would split it, but run
without one); it gets one JSON object on standard input per event:

    {"event": "switched", "service": "model", "time": 1764064800.0,
     "from_job": "22", "to_job": "23", "node": "node2"}

Events: ``serving`` (the first route), ``switched`` (to another job),
``waiting`` (no route for longer than waiting_alert_seconds; once per
outage), ``chain-stopped`` (with its reason: the forwarder ends),
``time-limit-near`` (the serving job ends soon and SLURM knows no
successor). Hooks run one at a time in order, each cut off after
HOOK_TIMEOUT; a failing hook is logged and never stops the forwarder.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import time

log = logging.getLogger("slurm_persist.hooks")

HOOK_TIMEOUT = 30.0
# Events waiting for a slow hook; past this they are counted and dropped.
QUEUE = 100
# How long close() lets queued events go out (a chain-stopped event, say).
FLUSH = 10.0


class Hooks:
    def __init__(self, command: str, service: str):
        self.argv = shlex.split(command) if command else []
        self.service = service
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Future | None = None
        self.sent = 0
        self.dropped = 0

    def emit(self, event: str, **fields) -> None:
        if not self.argv:
            return
        if self._queue is None:
            self._queue = asyncio.Queue(QUEUE)
            self._task = asyncio.ensure_future(self._deliver())
        record = {"event": event, "service": self.service, "time": time.time(), **fields}
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("hook=dropped event=%s queued=%d", event, QUEUE)

    async def _deliver(self) -> None:
        queue = self._queue
        assert queue is not None  # made with this task
        while True:
            record = await queue.get()
            try:
                await self._run(record)
            finally:
                queue.task_done()

    async def _run(self, record: dict) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            log.warning("hook=failed event=%s error=%r", record["event"], exc.strerror)
            return
        try:
            _, err = await asyncio.wait_for(
                proc.communicate(json.dumps(record).encode() + b"\n"), HOOK_TIMEOUT)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            log.warning("hook=timeout event=%s after=%.0fs", record["event"], HOOK_TIMEOUT)
            return
        if proc.returncode:
            said = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
            log.warning("hook=failed event=%s code=%d said=%r", record["event"],
                        proc.returncode, said[0][:200])
        else:
            self.sent += 1

    async def close(self) -> None:
        """Let queued events go out (for at most FLUSH seconds), then stop."""
        if self._task is None or self._queue is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), FLUSH)
        except asyncio.TimeoutError:
            log.warning("hook=unsent events=%d", self._queue.qsize())
        self._task.cancel()


class Announcer:
    """Which events the forwarder's moments make: serving or switched when
    a route is taken, waiting once per outage that lasts alert seconds."""

    def __init__(self, hooks: Hooks, alert: float):
        self.hooks, self.alert = hooks, alert
        self._waiting_since: float | None = None  # no route since then
        self._told = False

    def served(self, old_job: str | None, job: str, node: str, login: str) -> None:
        if old_job is None:
            self.hooks.emit("serving", job=job, node=node, login=login)
        elif old_job != job:
            self.hooks.emit("switched", from_job=old_job, to_job=job, node=node, login=login)
        self._waiting_since, self._told = None, False

    def waiting(self, message: str) -> None:
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        elif not self._told and now - self._waiting_since >= self.alert:
            self.hooks.emit("waiting", seconds=round(now - self._waiting_since), message=message)
            self._told = True
