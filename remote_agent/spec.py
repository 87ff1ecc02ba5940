"""The service spec: what `deploy` tells every job of a chain.

Written by the local side as ``<service dir>/spec.json`` (0600), read by the
agent at the start of each job. Paths are absolute on the cluster.

The service dir's layout is remote_agent.layout's.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import List

from . import layout, slots

FORMAT = 1
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# direct: login nodes reach the job's gate on node:port. reverse: the job
# reaches out to a login node and serves on a Unix socket there (see
# remote_agent.reverse), for sites where login nodes cannot reach nodes.
MODES = ("direct", "reverse")
LISTEN = ("unix", "tcp")
HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}")
# sun_path holds 108 bytes; "<job id>-<n>.sock" takes up to 20 of them.
SOCKET_PATH_MAX = 107 - 20


class SpecError(ValueError):
    """A spec that cannot be used; the message says which field and why."""


def check_name(kind: str, value: str) -> str:
    """Names end up in paths, job names and shell commands: keep them plain."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise SpecError(f"{kind} {value!r}: use 1-63 letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit")
    return value


def check_cluster_path(kind: str, path: str) -> str:
    """Any character goes but two: in sbatch's --output pattern a backslash
    turns every %j off (all jobs would share one log), and a newline has no
    place in a path. Spaces, quotes and the like travel as they are."""
    if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in "\\\n"):
        raise SpecError(f"{kind} {path!r}: use an absolute path without backslashes or newlines")
    return path


@dataclass(frozen=True)
class Spec:
    name: str
    job_name: str
    service_dir: str
    app_dir: str
    agent_dir: str
    script: str = "slurm.sbatch"
    command: List[str] = field(default_factory=lambda: ["./run"])
    sbatch_options: List[str] = field(default_factory=list)
    health_path: str = "/health"
    health_timeout: float = 600.0
    mode: str = "direct"
    # Reverse mode: [name the nodes reach it by, name the laptop uses] per
    # login node, in order of preference; the key the job logs in with and
    # the login nodes' host keys. Filled in by deploy.
    login_nodes: List[List[str]] = field(default_factory=list)
    reverse_key: str = ""
    known_hosts: str = ""
    listen: str = "unix"
    overlap_minutes: int = 0
    warn_seconds: int = 90
    drain_seconds: float = 30.0
    max_restarts: int = 3
    crash_loop_jobs: int = 3
    replicas: int = 1
    # A hash of the service files deploy sent ("" when it sent none): each
    # job's record carries it, so status tells old code from new.
    app: str = ""
    format: int = FORMAT

    def __post_init__(self) -> None:
        check_name("service name", self.name)
        check_name("job name", self.job_name)
        for kind in ("service_dir", "app_dir", "agent_dir"):
            check_cluster_path(kind, getattr(self, kind))
        if self.mode not in MODES:
            raise SpecError(f"mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.listen not in LISTEN:
            raise SpecError(f"listen {self.listen!r}: choose unix (private socket) or tcp")
        if not self.health_path.startswith("/"):
            raise SpecError(f"health path {self.health_path!r} must start with '/'")
        if not self.command:
            raise SpecError("command is empty")
        for name in ("overlap_minutes", "warn_seconds", "max_restarts", "crash_loop_jobs"):
            if getattr(self, name) < 0:
                raise SpecError(f"{name} must not be negative")
        for option in self.sbatch_options:
            if not option.startswith("--") or "\n" in option:
                raise SpecError(f"sbatch option {option!r}: write it as --name=value")
        if not 1 <= self.replicas <= slots.MAX_REPLICAS:
            raise SpecError(f"replicas {self.replicas}: choose 1 to {slots.MAX_REPLICAS}")
        if self.mode == "reverse":
            self._check_reverse()

    def _check_reverse(self) -> None:
        for pair in self.login_nodes:
            if not (isinstance(pair, list) and len(pair) == 2
                    and all(isinstance(h, str) and HOST_RE.fullmatch(h) for h in pair)):
                raise SpecError(f"login node {pair!r}: expected [host, alias], plain host names")
        for name in ("reverse_key", "known_hosts"):
            if not getattr(self, name).startswith("/"):
                raise SpecError(f"{name} must be an absolute path in reverse mode")
        if ":" in self.service_dir:
            # ssh -R and -L split socket paths at colons, with no escape.
            raise SpecError(f"{self.service_dir}: a colon cannot be in a reverse-mode "
                            "service dir (server-and-port-file)")
        if len(str(self.sockets_dir)) > SOCKET_PATH_MAX:
            raise SpecError(f"{self.sockets_dir} is too long for a Unix socket path "
                            f"({SOCKET_PATH_MAX} characters at most): choose a shorter "
                            "service dir (server-and-port-file)")

    @property
    def service_path(self) -> Path:
        return Path(self.service_dir)

    @property
    def sockets_dir(self) -> Path:
        return layout.sockets(self.service_path)

    def dumps(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def loads(text: str) -> Spec:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SpecError(f"spec is not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SpecError(f"spec format {data.get('format') if isinstance(data, dict) else None!r}, "
                        f"this agent reads {FORMAT}: deploy again")
    known = {f.name for f in fields(Spec)}
    unknown = set(data) - known
    if unknown:
        raise SpecError(f"unknown spec fields: {', '.join(sorted(unknown))}")
    try:
        return Spec(**data)
    except TypeError as exc:
        raise SpecError(str(exc)) from None


def load(service_dir: Path) -> Spec:
    path = layout.spec_file(service_dir)
    try:
        return loads(path.read_text())
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror}") from None
