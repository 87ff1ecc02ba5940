"""The endpoint record: where one job of a chain serves, and how to enter.

This module is the one definition of the format, read by the local side and
written by the agent. One record per job, under
``<service dir>/endpoints/<job id>.json``, written atomically (temp file +
``os.replace``) with mode 0600, because it holds the job's secret.

Format 1, a JSON object:

=============  ==========================================================
``format``     1
``service``    the service's name
``job_id``     the SLURM job that owns this record (a string)
``node``       the compute node the job runs on
``host``       the address a login node uses to reach ``port``
``port``       the agent's gate on ``host`` (direct mode), else null
``socket``     the Unix socket on ``login_node`` (reverse mode), else null
``login_node`` the login node holding ``socket`` (reverse mode), by the
               name the local side gave it (see Spec.login_nodes), else null
``state``      starting | serving | draining | stopped
``started``    when the job's agent started (Unix time)
``ends_at``    the job's time limit as Unix time, null when unknown
``secret``     hex; a connection must present it before any byte reaches
               the service (see :mod:`remote_agent.gate`)
``restarts``   how many times the agent restarted the server in this job
``slot``       which replica's chain the job belongs to (remote_agent.slots);
               0 when absent (records of agents before replicas)
``app``        a hash of the service files the job runs ("" when unknown)
``address``    null in the file; ``show``, run on a login node, fills in
               what ``host`` resolves to there, so the forward connects to
               it without a name lookup per connection
=============  ==========================================================

A reader trusts a record only for the job SLURM says is running, and only
if no other user can write it; a record that does not parse or is not
private is an error for that record, never for the chain.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

from . import layout, private

FORMAT = 1
STATES = ("starting", "serving", "draining", "stopped")
ENDPOINTS_DIR = layout.ENDPOINTS


# Added to format 1 later: a record without them still reads.
OPTIONAL = {"slot": 0, "app": "", "address": None}


class EndpointError(ValueError):
    """A record that is missing, truncated, of another format or malformed."""


@dataclass(frozen=True)
class Endpoint:
    service: str
    job_id: str
    node: str
    host: str
    port: Optional[int]
    socket: Optional[str]
    login_node: Optional[str]
    state: str
    started: float
    ends_at: Optional[float]
    secret: str
    restarts: int = 0
    slot: int = 0
    app: str = ""
    format: int = FORMAT
    # Where the login node that ran `show` resolved host (not a fact of the
    # job's: two reads of one record may differ, and are the same record).
    address: Optional[str] = field(default=None, compare=False)

    def with_state(self, state: str, **changes) -> Endpoint:
        values = asdict(self)
        values.update(changes, state=state)
        return Endpoint(**values)

    @property
    def remote(self) -> str:
        """What a login node connects to: the gate's host:port (by address
        when known), or the socket."""
        if self.socket is not None:
            return self.socket
        host = self.address or self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


_TYPES: Dict[str, Union[type, Tuple[type, ...]]] = {
    "service": str, "job_id": str, "node": str, "host": str, "state": str, "secret": str,
    "port": (int, type(None)), "socket": (str, type(None)), "login_node": (str, type(None)),
    "started": (int, float), "ends_at": (int, float, type(None)), "restarts": int, "format": int,
    "slot": int, "app": str, "address": (str, type(None)),
}


def loads(text: str) -> Endpoint:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise EndpointError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise EndpointError("not a JSON object")
    if data.get("format") != FORMAT:
        raise EndpointError(f"format {data.get('format')!r}, this version reads {FORMAT}")
    known = {f.name for f in fields(Endpoint)}
    data = {**OPTIONAL, **data}
    missing = known - set(data)
    if missing:
        raise EndpointError(f"missing {', '.join(sorted(missing))}")
    for name in known:
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, _TYPES[name]):
            raise EndpointError(f"{name} has the wrong type ({type(value).__name__})")
    if data["state"] not in STATES:
        raise EndpointError(f"unknown state {data['state']!r}")
    if (data["port"] is None) == (data["socket"] is None):
        raise EndpointError("exactly one of port and socket must be set")
    if data["port"] is not None and not 0 < data["port"] < 65536:
        raise EndpointError(f"port {data['port']} out of range")
    return Endpoint(**{name: data[name] for name in known})


def path_for(service_dir: Path, job_id: str) -> Path:
    return layout.record(service_dir, job_id)


def write(service_dir: Path, endpoint: Endpoint) -> Path:
    """Replace this job's record atomically; readers see old or new, never half."""
    target = path_for(service_dir, endpoint.job_id)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(target.parent), prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as handle:  # mkstemp already made it 0600
            handle.write(endpoint.dumps())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return target


def read(path: Path) -> Endpoint:
    """A record that is not its user's alone is refused: whoever could
    write it could send the forwarders to their own server."""
    unsafe = private.problems([Path(path)])
    if unsafe:
        raise EndpointError(unsafe[0])
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise EndpointError(f"cannot read {path}: {exc.strerror}") from None
    return loads(text)


def remove(service_dir: Path, job_id: str) -> None:
    try:
        path_for(service_dir, job_id).unlink()
    except FileNotFoundError:
        pass
