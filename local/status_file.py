"""The running forwarder's own account, for `status` and `up --daemonize`:
``status.json`` in the service's local state directory, replaced atomically."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

from remote_agent.joblog import Summariser

from .paths import status_file


@dataclass
class Status:
    pid: int
    service: str
    local_port: int
    state: str = "starting"
    job_id: str = ""
    node: str = ""
    login: str = ""
    since: float = 0.0
    switches: int = 0
    message: str = ""
    supervisor: int = 0  # the daemon that restarts this forwarder, if any


class StatusFile:
    def __init__(self, name: str, port: int, supervisor: int, events: Summariser):
        self.status = Status(os.getpid(), name, port, since=time.time(), supervisor=supervisor)
        self.path = status_file(name)
        self._events = events

    def set(self, state: str, message: str = "", where: tuple | None = None) -> None:
        """where: (job, node, login) of the current route, if any."""
        if state != self.status.state:
            self.status.since = time.time()
        self.status.state, self.status.message = state, message
        if where:
            self.status.job_id, self.status.node, self.status.login = where
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(asdict(self.status)))
            os.replace(tmp, self.path)
        except OSError as exc:  # a full local disk: keep forwarding, say it once per window
            self._events.note("status=unwritable", f"path={tmp} error={exc.strerror}")

    def supervised_by(self, pid: int) -> None:
        """A new supervisor took this forwarder on (orphaned.py)."""
        self.status.supervisor = pid
        self.set(self.status.state, self.status.message)


def read_status(name: str) -> Status | None:
    try:
        return Status(**json.loads(status_file(name).read_text()))
    except (OSError, ValueError, TypeError):
        return None
