"""A service's chain as the laptop sees it: paths on the cluster, the jobs
SLURM knows, the records the agents published, and the few actions the
local side takes (start a chain, stop it). All SLURM text goes through
remote_agent.slurm; every command goes through the Site's failover.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from remote_agent import layout, slots, slurm
from remote_agent.endpoint import Endpoint
from remote_agent.spec import Spec, check_cluster_path

from .conditions import Home
from .config import Options
from .remote import COMMAND_TIMEOUT, ClusterError, Result, Site
from .snapshot import Snapshot, parse_show

log = logging.getLogger("slurm_persist.cluster")


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
        service_dir = expand(options.service_dir
                             or f"~/.slurm-persist/services/{options.name}")
        app_dir = expand(options.cluster_app_dir or layout.app(service_dir))
        check_cluster_path("service-dir", service_dir)
        check_cluster_path("cluster-app-dir", app_dir)
        base = f"{home}/.slurm-persist"
        return cls(home, f"{base}/agent", service_dir, app_dir, f"{base}/reverse")


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
                    replicas=o.replicas,
                    drain_seconds=max(30.0, 3 * o.heartbeat_time), **self._reverse_paths())

    def _reverse_paths(self) -> dict[str, Any]:
        if self.options.mode != "reverse":
            return {}
        lay = self.layout
        return {"reverse_key": f"{lay.reverse_dir}/id_ed25519",
                "known_hosts": f"{lay.reverse_dir}/known_hosts"}

    # -- reading ---------------------------------------------------------

    def jobs(self) -> list[slurm.Job]:
        """Active jobs of every slot of this service, oldest first (slots
        above the replica count too: `down` must find them); SlurmUnknown
        when unsure."""
        jobs = [j for j in self.all_jobs() if self.slot(j) is not None]
        return sorted(jobs, key=lambda j: int(j.job_id))

    def slot(self, job: slurm.Job) -> int | None:
        return slots.slot_of(self.options.job_name, job.name)

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
        return self.run_slurm(slurm.squeue_argv(self._user, **query))

    def run_slurm(self, argv: list[str], once: bool = False) -> Result:
        """A SLURM command, counted, on the next login node when this one
        fails it; once: see Site.run (sbatch)."""
        self.on_slurm()
        return self.site.run(argv, elsewhere=_failed_here, once=once)

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
            return parse_show(data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # An older agent or a broken file: a ClusterError is waited out
            # by the forwarder, anything else would end it.
            raise ClusterError(f"unexpected output of the agent's show on {result.host} "
                               f"({type(exc).__name__}: {exc}); deploy again") from None

    def serving(self, jobs: list[slurm.Job], snap: Snapshot) -> dict[int, Endpoint]:
        """Per slot, the newest record that is serving *and* whose job SLURM runs."""
        running = {j.job_id for j in jobs if j.running}
        found: dict[int, Endpoint] = {}
        for e in sorted(snap.endpoints.values(), key=lambda e: int(e.job_id)):
            if e.job_id in running and e.state == "serving":
                found[e.slot] = e
        return found

    def agent(self, command: str, *extra: str, timeout: float = COMMAND_TIMEOUT):
        lay = self.layout
        return self.site.run(["env", f"PYTHONPATH={lay.agent_dir}", "python3", "-m",
                              "remote_agent", command, lay.service_dir, *extra], timeout=timeout)

    # -- acting ----------------------------------------------------------

    def ensure(self, only: list[int] | None = None) -> tuple[str, bool]:
        """The chain's oldest active job, every slot (or those of `only`)
        started if SLURM says for certain it has none (local.launch)."""
        from .launch import Launch  # launch builds on Chain
        return Launch(self).ensure(only)

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
                self.run_slurm(slurm.scancel_argv(fresh))
                cancelled += fresh
            time.sleep(1)
        raise ClusterError(f"jobs still queued after {timeout:.0f} s: "
                           f"{', '.join(j.job_id for j in self.jobs())}")

    def log_path(self, job_id: str) -> str:
        return layout.log_text(self.layout.service_dir, job_id)
