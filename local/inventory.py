"""`slurm-persist list`: every service of this user, here and on the cluster."""

from __future__ import annotations

from remote_agent import slots, slurm

from . import daemon, paths
from .config import Options
from .service import connected
from .status_file import read_status


def list_services(options: Options) -> str:
    """Every service of this user: forwarders in the local state folder, and
    on the cluster the service folders and their jobs (one squeue)."""
    local = {}
    base = paths.state_base() / "slurm-persist" / "services"
    for folder in sorted(base.iterdir()) if base.is_dir() else []:
        pid = daemon.running_pid(folder.name)
        status = read_status(folder.name)
        local[folder.name] = (f"pid {pid} {status.state if status else ''} "
                              f"127.0.0.1:{status.local_port if status else '?'}"
                              if pid else "not running")
    with connected(options) as chain:
        home = chain.layout.home
        folders = chain.site.run(["ls", "-1", f"{home}/.slurm-persist/services"])
        names = folders.stdout.split() if folders.returncode == 0 else []
        try:
            jobs = chain.all_jobs()
        except slurm.SlurmUnknown as exc:
            jobs, unknown = [], f"unknown ({' | '.join(str(exc).splitlines())})"
        else:
            unknown = ""
    rows = [("service", "forwarder here", "jobs on the cluster")]
    for name in sorted(set(local) | set(names)):
        mine = [f"{j.job_id}:{j.state}" for j in jobs
                if slots.slot_of(f"sp-{name}", j.name) is not None]
        on_cluster = unknown or " ".join(mine) or ("none" if name in names else "not deployed")
        rows.append((name, local.get(name, "-"), on_cluster))
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{r[0].ljust(width[0])}  {r[1].ljust(width[1])}  {r[2]}" for r in rows)
