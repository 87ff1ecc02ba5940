"""The service dir on the cluster: the one place that names its files.

A service dir (``~/.slurm-persist/services/<name>/`` unless the
service_dir option names another)::

    spec.json          what deploy tells every job (remote_agent.spec)
    chain.json         the chain's own state (remote_agent.chain)
    app/               the user's service files (hpc/ by default)
    endpoints/<job>.json   one record per job (remote_agent.endpoint)
    logs/<job>.out     each job's output: the agent's lines, the server's output
    sockets/           reverse mode: each job's socket on a login node
    .ensure.lock/      held by one `up` at a time (remote_agent.lock)

Works on plain strings too (the local side builds cluster paths as text).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Union

SPEC = "spec.json"
CHAIN = "chain.json"
APP = "app"
ENDPOINTS = "endpoints"
LOGS = "logs"
SOCKETS = "sockets"
LOCK = ".ensure.lock"

Where = Union[str, Path]


def spec_file(service_dir: Where) -> Path:
    return Path(service_dir) / SPEC


def chain_file(service_dir: Where) -> Path:
    return Path(service_dir) / CHAIN


def endpoints(service_dir: Where) -> Path:
    return Path(service_dir) / ENDPOINTS


def record(service_dir: Where, job_id: str) -> Path:
    return endpoints(service_dir) / f"{job_id}.json"


def logs(service_dir: Where) -> Path:
    return Path(service_dir) / LOGS


def log_text(service_dir: str, job_id: str) -> str:
    """The job's output file, as the local side names it over ssh."""
    return f"{service_dir}/{LOGS}/{job_id}.out"


def log_pattern(service_dir: str) -> str:
    """sbatch's --output pattern: %j is the job id, a '%' of the path itself is '%%'."""
    return f"{service_dir.replace('%', '%%')}/{LOGS}/%j.out"


def app(service_dir: str) -> str:
    return f"{service_dir}/{APP}"


def sockets(service_dir: Where) -> Path:
    return Path(service_dir) / SOCKETS


def lock(service_dir: Where) -> Path:
    return Path(service_dir) / LOCK


def private(service_dir: Path) -> List[Path]:
    """What must be the user's alone before a job trusts the dir."""
    return [service_dir, spec_file(service_dir), chain_file(service_dir),
            endpoints(service_dir), logs(service_dir), sockets(service_dir)]
