"""A service's chain as the laptop sees it: paths on the cluster, the jobs
SLURM knows, the records the agents published, and the few actions the
local side takes (start a chain, stop it). All SLURM text goes through
remote_agent.slurm; every command goes through the Site's failover.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remote_agent import endpoint, layout, slurm
from remote_agent.chain import ChainState
from remote_agent.endpoint import Endpoint
from remote_agent.lock import WAIT as LOCK_WAIT
from remote_agent.spec import Spec, check_cluster_path

from .conditions import Home
from .config import Options
from .remote import COMMAND_TIMEOUT, ClusterError, Result, Site

log = logging.getLogger("slurm_persist.cluster")

# remote.Site's status for a command it cut off (as timeout(1) does).
TIMED_OUT = 124


class SubmitUnknown(slurm.SlurmUnknown):
    """sbatch was cut off: the chain may or may not have been submitted."""


@dataclass(frozen=True)
class Layout:
    """Absolute paths of one service on the cluster."""

    home: str
    agent_dir: str
    service_dir: str
    app_dir: str
    reverse_dir: str

    @classmethod
    def of(cls, options: Options, home: str) -> Layout:
        def expand(path: str) -> str:
            return home + path[1:] if path.startswith("~") else path
        service_dir = expand(options.server_and_port_file
                             or f"~/.slurm-persist/services/{options.name}")
        app_dir = expand(options.hpc_script_dir or layout.app(service_dir))
        check_cluster_path("server-and-port-file", service_dir)
        check_cluster_path("hpc-script-dir", app_dir)
        base = f"{home}/.slurm-persist"
        return cls(home, f"{base}/agent", service_dir, app_dir, f"{base}/reverse")


@dataclass
class Snapshot:
    """What the service dir says: chain state and records by job id."""

    chain: ChainState
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


_CHAIN_TYPES = {"failed_jobs": int, "stopped": bool, "reason": str}


def _parse_show(data: dict) -> Snapshot:
    """The JSON of `python3 -m remote_agent show`, every type checked: a
    stopped mark of "false" must not read as true. A bad record is an error
    for that record only."""
    chain, raws, errors = data["chain"], data["endpoints"], data["errors"]
    for key, kind in _CHAIN_TYPES.items():
        if not isinstance(chain[key], kind):
            raise TypeError(f"chain {key} is a {type(chain[key]).__name__}")
    if not isinstance(raws, list) or not isinstance(errors, dict):
        raise TypeError("endpoints is not a list or errors not an object")
    state = ChainState(**{key: chain[key] for key in _CHAIN_TYPES})
    records, errors = {}, {str(k): str(v) for k, v in errors.items()}
    for raw in raws:
        try:
            record = endpoint.loads(json.dumps(raw))
            records[record.job_id] = record
        except endpoint.EndpointError as exc:
            errors[str(raw.get("job_id") if isinstance(raw, dict) else raw)[:40]] = str(exc)
    return Snapshot(state, records, errors)


def _failed_here(result: Result) -> bool:
    """Ask another login node: the request never reached SLURM (see slurm.failed_on_node)."""
    return slurm.failed_on_node(result.returncode, result.stderr)


class Chain:
    def __init__(self, site: Site, options: Options):
        self.site = site
        self.options = options
        self._layout: Layout | None = None
        # Told of every SLURM command run (the forwarder's metrics count them).
        self.on_slurm: Callable[[], None] = lambda: None
        self._user = options.username

    @property
    def layout(self) -> Layout:
        if self._layout is None:
            result = self.site.run(["printenv", "HOME"])
            home = result.stdout.strip()
            if result.returncode != 0 or not home.startswith("/"):
                raise ClusterError(f"cannot find the home directory on {result.host}")
            self._layout = Layout.of(self.options, home)
        return self._layout

    def spec(self) -> Spec:
        o, lay = self.options, self.layout
        return Spec(name=o.name, job_name=o.job_name, service_dir=lay.service_dir,
                    app_dir=lay.app_dir, agent_dir=lay.agent_dir,
                    sbatch_options=list(o.sbatch_options), health_path=o.health_path,
                    health_timeout=o.health_timeout, max_restarts=o.max_restarts,
                    crash_loop_jobs=o.crash_loop_jobs, overlap_minutes=o.overlap_minutes,
                    warn_seconds=o.warn_seconds, listen=o.listen, mode=o.mode,
                    drain_seconds=max(30.0, 3 * o.heartbeat_time), **self._reverse_paths())

    def _reverse_paths(self) -> dict[str, Any]:
        if self.options.mode != "reverse":
            return {}
        lay = self.layout
        return {"reverse_key": f"{lay.reverse_dir}/id_ed25519",
                "known_hosts": f"{lay.reverse_dir}/known_hosts"}

    # -- reading ---------------------------------------------------------

    def jobs(self) -> list[slurm.Job]:
        """Active jobs of this chain, oldest first; SlurmUnknown when unsure."""
        result = self._squeue(job_name=self.options.job_name)
        jobs = slurm.interpret_squeue(result.returncode, result.stdout, result.stderr)
        return sorted(jobs, key=lambda j: int(j.job_id))

    def all_jobs(self) -> list[slurm.Job]:
        """Every active job of this user (for `list`); SlurmUnknown when unsure."""
        result = self._squeue()
        return slurm.interpret_squeue(result.returncode, result.stdout, result.stderr)

    def ended(self, job_id: str) -> slurm.Job | None:
        """SLURM's last record of a job, ended or not; None once forgotten."""
        result = self._squeue(job_id=job_id, ended=True)
        return slurm.interpret_ended(result.returncode, result.stdout, result.stderr)

    def _squeue(self, **query) -> Result:
        """squeue for this user, counted, on the next login node when this one fails it."""
        if not self._user:
            self._user = self.site.run(["id", "-un"]).stdout.strip()
        self.on_slurm()
        return self.site.run(slurm.squeue_argv(self._user, **query), elsewhere=_failed_here)

    def home(self) -> Home | None:
        """Can jobs write in the service dir? None when the check could not run."""
        result = self.agent("check")
        try:
            return Home.parse(json.loads(result.stdout)) if result.returncode == 0 else None
        except (ValueError, AttributeError):
            return None

    def snapshot(self) -> Snapshot:
        result = self.agent("show")
        if result.returncode not in (0, 3):
            raise ClusterError(f"reading the service dir failed: {result.stderr.strip()[:300]}")
        try:
            data = json.loads(result.stdout)
            if result.returncode == 3:
                raise ClusterError("refusing the service dir: " + "; ".join(data["unsafe"]))
            return _parse_show(data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # An older agent or a broken file: a ClusterError is waited out
            # by the forwarder, anything else would end it.
            raise ClusterError(f"unexpected output of the agent's show on {result.host} "
                               f"({type(exc).__name__}: {exc}); deploy again") from None

    def serving(self, jobs: list[slurm.Job], snap: Snapshot) -> Endpoint | None:
        """The newest record that is serving *and* whose job SLURM runs."""
        running = {j.job_id for j in jobs if j.running}
        live = [e for e in snap.endpoints.values() if e.job_id in running and e.state == "serving"]
        return max(live, key=lambda e: int(e.job_id)) if live else None

    def agent(self, command: str, *extra: str, timeout: float = COMMAND_TIMEOUT):
        lay = self.layout
        return self.site.run(["env", f"PYTHONPATH={lay.agent_dir}", "python3", "-m",
                              "remote_agent", command, lay.service_dir, *extra], timeout=timeout)

    # -- acting ----------------------------------------------------------

    def ensure(self) -> tuple[str, bool]:
        """The chain's oldest active job, starting a chain only when SLURM
        says for certain that none exists (SlurmUnknown propagates). Under
        the service dir's lock, so that concurrent `up`s start one chain."""
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # The lock waits up to LOCK_WAIT for another up: the command may too.
        locked = self.agent("lock", owner, timeout=LOCK_WAIT + COMMAND_TIMEOUT)
        if locked.returncode == 3:
            raise ClusterError(f"another `up` of {self.options.name} held its lock on the "
                               f"cluster for 60 s; try again")
        if locked.returncode != 0:
            said = locked.stderr.strip().splitlines()[-1:] or [f"exit {locked.returncode}"]
            raise ClusterError(f"taking the lock of {self.options.name} on the cluster "
                               f"failed: {said[0][:300]}")
        try:
            found = self._find_or_start()
        except SubmitUnknown:
            # That sbatch may still go through: the lock is left to go stale
            # (lock.STALE, 120 s) rather than let another up submit meanwhile.
            log.warning("service=%s state=lock-kept reason=%r", self.options.name,
                        "sbatch gave no answer; the lock goes stale in 2 minutes")
            raise
        except BaseException:
            self.agent("unlock", owner)
            raise
        self.agent("unlock", owner)
        return found

    def _find_or_start(self) -> tuple[str, bool]:
        jobs = self.jobs()
        if jobs:
            log.info("service=%s job=%s state=chain-found", self.options.name, jobs[0].job_id)
            return jobs[0].job_id, False
        self.agent("reset")
        self.on_slurm()
        script = Path(self.options.local_hpc_script_dir) / "slurm.sbatch"
        text = script.read_text() if script.is_file() else ""
        shown = self.site.run(slurm.reservations_argv())  # for --time-min (slurm.time_min)
        reservations = slurm.parse_reservations(shown.stdout) if shown.returncode == 0 else []
        result = self.site.run(slurm.sbatch_argv(self.spec(), script=text,
                                                 reservations=reservations),
                               elsewhere=_failed_here)
        try:
            job_id = slurm.parse_sbatch(result.returncode, result.stdout, result.stderr)
        except slurm.SlurmUnknown as exc:
            if result.returncode in (TIMED_OUT, -1):  # cut off: it may have gone through
                raise SubmitUnknown(str(exc)) from None
            raise
        log.info("service=%s job=%s state=chain-started", self.options.name, job_id)
        return job_id, True

    def cancel_all(self, timeout: float = 60) -> list[str]:
        """Stop the chain: mark it stopped first, so no agent submits or
        releases a successor, then cancel pending jobs before running ones."""
        self.agent("stop")
        cancelled: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = self.jobs()
            if not jobs:
                return cancelled
            order = ([j.job_id for j in jobs if not j.running]
                     + [j.job_id for j in jobs if j.running])
            fresh = [j for j in order if j not in cancelled]
            if fresh:
                self.site.run(slurm.scancel_argv(fresh), elsewhere=_failed_here)
                cancelled += fresh
            time.sleep(1)
        raise ClusterError(f"jobs still queued after {timeout:.0f} s: "
                           f"{', '.join(j.job_id for j in self.jobs())}")

    def log_path(self, job_id: str) -> str:
        return layout.log_text(self.layout.service_dir, job_id)
