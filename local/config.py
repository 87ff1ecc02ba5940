"""Options of a service: one dataclass, filled from slurm-persist.toml and
the command line (the original tool's flags, same names and meanings).

``slurm-persist.toml`` in the project directory::

    [defaults]                      # shared by every service below
    hpc_system_url = "login1.example.org"
    fallback_system_url = ["login2.example.org"]
    jumphost_url = "jump.example.org"
    username = "alice"

    [services.model]                # one table per service
    local_hpc_script_dir = "hpc"
    local_port = 8642

Keys are the flags' names with underscores. Command-line flags win over
the file; the file wins over the defaults here. Every problem is a
:class:`ConfigError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from remote_agent.spec import MODES, Spec, SpecError, check_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

CONFIG_FILE = "slurm-persist.toml"
# What every job is told comes from the spec; its defaults are the defaults here.
_SPEC = {f.name: f.default for f in dataclasses.fields(Spec)}
DEFAULT_SERVICE = "hpc"


class ConfigError(ValueError):
    """Bad user input: printed as one line, exit status 2."""


@dataclass
class Options:
    """Everything one service needs, laptop side. See `slurm-persist up --help`."""

    name: str = DEFAULT_SERVICE
    hpc_system_url: Optional[str] = None
    fallback_system_url: list[str] = field(default_factory=list)
    jumphost_url: Optional[str] = None
    username: Optional[str] = None
    jumphost_username: Optional[str] = None
    ssh_config: Optional[str] = None
    local_hpc_script_dir: str = "hpc"
    hpc_script_dir: Optional[str] = None
    server_and_port_file: Optional[str] = None
    copy: bool = True
    debug: bool = False
    retries: int = 3
    local_port: int = 8642
    heartbeat_time: float = 10.0
    hpc_job_name: Optional[str] = None
    max_attempts_get_server_and_port: int = 120
    delay_between_server_and_port: float = 5.0
    daemonize: bool = False
    sbatch_options: list[str] = field(default_factory=list)
    overlap_minutes: int = _SPEC["overlap_minutes"]
    health_path: str = _SPEC["health_path"]
    mode: str = _SPEC["mode"]
    listen: str = _SPEC["listen"]
    health_timeout: float = _SPEC["health_timeout"]
    max_restarts: int = _SPEC["max_restarts"]
    warn_seconds: int = _SPEC["warn_seconds"]
    crash_loop_jobs: int = _SPEC["crash_loop_jobs"]
    hold_seconds: float = 120.0
    on_event: str = ""
    metrics_port: int = 0
    waiting_alert_seconds: float = 300.0

    @property
    def login_nodes(self) -> list[str]:
        return [self.hpc_system_url, *self.fallback_system_url] if self.hpc_system_url else []

    @property
    def job_name(self) -> str:
        return self.hpc_job_name or f"sp-{self.name}"

    @property
    def uses_sandbox(self) -> bool:
        return self.hpc_system_url is None


FIELDS = {f.name: f for f in dataclasses.fields(Options)}


def load(cli: Mapping[str, Any], directory: Path = Path(".")) -> Options:
    """Merge defaults < slurm-persist.toml < command line, then validate."""
    values: dict[str, Any] = {}
    name = DEFAULT_SERVICE if cli.get("name") is None else cli["name"]
    path = directory / CONFIG_FILE
    if path.exists():
        table = _read_toml(path)
        values.update(_section(table, "defaults", path))
        services = table.get("services", {})
        if not isinstance(services, dict):
            raise ConfigError(f"{path}: [services] must be a table of tables")
        if cli.get("name") is not None and name not in services and services:
            raise ConfigError(f"{path}: no [services.{name}] (known: {', '.join(services)})")
        values.update(_section(services, name, path) if name in services else {})
    values.update({k: v for k, v in cli.items() if v is not None and v != []})
    values["name"] = name
    options = Options(**{k: _coerce(k, v) for k, v in values.items()})
    validate(options, directory)
    return options


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None


def _section(table: Mapping[str, Any], key: str, path: Path) -> dict:
    section = table.get(key, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [{key}] must be a table")
    unknown = set(section) - set(FIELDS) - {"name"}
    if unknown:
        raise ConfigError(f"{path}: [{key}] has unknown keys: {', '.join(sorted(unknown))}")
    return dict(section)


def _coerce(key: str, value: Any) -> Any:
    """Strings from a command line become the field's type; wrong types fail."""
    kind = FIELDS[key].type
    try:
        if kind in ("int", "float"):
            if isinstance(value, bool):
                raise ValueError
            return int(value) if kind == "int" else float(value)
        if kind == "bool":
            if isinstance(value, str):
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if kind.startswith("list"):
            items = [value] if isinstance(value, str) else list(value)
            return [str(v) for v in items]
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"{key.replace('_', '-')}: expected {kind}, got {value!r}") from None


def validate(options: Options, directory: Path) -> None:
    try:
        check_name("service name", options.name)
        check_name("job name", options.job_name)
    except SpecError as exc:
        raise ConfigError(str(exc)) from None
    if not 1 <= options.local_port <= 65535:
        raise ConfigError(f"local-port {options.local_port}: choose 1-65535")
    if not 0 <= options.metrics_port <= 65535 or options.metrics_port == options.local_port:
        raise ConfigError(f"metrics-port {options.metrics_port}: choose 1-65535, not the "
                          "local port (0: no metrics)")
    for key in ("retries", "max_attempts_get_server_and_port", "overlap_minutes",
                "max_restarts"):
        if getattr(options, key) < 0:
            raise ConfigError(f"{key.replace('_', '-')} must not be negative")
    for key in ("heartbeat_time", "delay_between_server_and_port", "hold_seconds",
                "health_timeout", "crash_loop_jobs", "waiting_alert_seconds"):
        if getattr(options, key) <= 0:
            raise ConfigError(f"{key.replace('_', '-')} must be positive")
    for host in filter(None, [*options.login_nodes, options.jumphost_url]):
        if not host.strip() or any(c.isspace() for c in host) or host.startswith("-"):
            raise ConfigError(f"host {host!r} is not a host name")
    if options.mode not in MODES:
        raise ConfigError(f"mode {options.mode!r}: choose direct (login nodes connect to the "
                          "job, the default) or reverse (the job connects to a login node)")
    if options.listen not in ("unix", "tcp"):
        raise ConfigError(f"listen {options.listen!r}: choose unix (a private socket, "
                          "the default) or tcp (a loopback port)")
    for option in options.sbatch_options:
        if not option.startswith("--") or "\n" in option:
            raise ConfigError(f"sbatch option {option!r}: write it as --name=value")
    try:
        shlex.split(options.on_event)
    except ValueError as exc:
        raise ConfigError(f"on-event {options.on_event!r}: {exc}") from None
    if options.ssh_config and not Path(options.ssh_config).expanduser().is_file():
        raise ConfigError(f"ssh-config {options.ssh_config}: no such file")


def check_script_dir(path: Path) -> None:
    if not (path / "slurm.sbatch").is_file():
        raise ConfigError(f"local-hpc-script-dir {path}: no slurm.sbatch there "
                          "(start from the hpc/ example)")


def check_port_free(port: int) -> None:
    """Fail early and clearly, before anything on the cluster is touched."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise ConfigError(f"local-port {port} is already in use on 127.0.0.1 "
                              "(pick another with --local-port)") from None


def state_dir(name: str) -> Path:
    """Local runtime files of one service: pid, log, control sockets."""
    path = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    path.mkdir(parents=True, exist_ok=True)  # the user's own: its mode is theirs to choose
    # Pid, status and logs name the service and its cluster: each level ours
    # alone, also when an older version made it 0755.
    for part in ("slurm-persist", "services", name):
        path = path / part
        path.mkdir(mode=0o700, exist_ok=True)
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o700)
    return path
