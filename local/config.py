"""Options of a service: one dataclass, filled from slurm-persist.toml (a
[defaults] table, then one [services.NAME] table per service: see the
README), the command line and run_sync's keywords.

Keys are the fields' names; the original tool's (hpc_system_url, ...) are
accepted too, at this edge only (a field's `legacy`). Command-line flags win
over the file; the file wins over the defaults here. Every problem is a
:class:`ConfigError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import shlex
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remote_agent.slots import MAX_REPLICAS
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


# Which tasks take an option as a flag (None: slurm-persist.toml only).
CONNECT, SPEC, FORWARD = "connect", "spec", "forward"


def opt(default: Any, help: str, group: str | None = None, flag: str | None = None,
        legacy: str | None = None):
    """One option, defined once: its default, its help (the CLI's), which
    tasks take it as a flag, the flag's name where it is not the field's,
    and the original tool's name for it (a toml key, a flag, a keyword)."""
    meta = {"help": help, "group": group, "flag": flag or None, "legacy": legacy}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Options:
    """Everything one service needs, laptop side. See `slurm-persist up --help`."""

    name: str = opt(DEFAULT_SERVICE, "service: a [services.NAME] table in slurm-persist.toml "
                    "(default: hpc)", CONNECT)
    login_node: str | None = opt(None, "login node to use first (default: the docker "
                                 "sandbox's login1)", CONNECT, legacy="hpc_system_url")
    fallback_login_nodes: list[str] = opt([], "login node to use when the one before fails; "
                                          "repeat for more", CONNECT, flag="fallback_login_node",
                                          legacy="fallback_system_url")
    jumphost: str | None = opt(None, "jumphost (bastion) between you and the login nodes",
                               CONNECT, legacy="jumphost_url")
    username: str | None = opt(None, "your user name on the login nodes", CONNECT)
    jumphost_username: str | None = opt(None, "your user name on the jumphost", CONNECT)
    ssh_config: str | None = opt(None, "ssh_config file to use instead of ~/.ssh/config",
                                    CONNECT)
    app_dir: str = opt("hpc", "local folder with slurm.sbatch, run and your server "
                       "(default: hpc)", SPEC, legacy="local_hpc_script_dir")
    cluster_app_dir: str | None = opt(None, "cluster folder for those files (default "
                                      "~/.slurm-persist/services/NAME/app)", CONNECT,
                                      legacy="hpc_script_dir")
    service_dir: str | None = opt(None, "cluster folder for the per-job endpoint records, "
                                  "logs and spec (default ~/.slurm-persist/services/NAME)",
                                  CONNECT, legacy="server_and_port_file")
    copy: bool = opt(True, "copy app-dir to the cluster (on by default; --no-copy to skip)",
                     SPEC)
    debug: bool = opt(False, "log debug detail, SSH included", CONNECT)
    retries: int = opt(3, "more rounds over all login nodes, with backoff, when none answers "
                       "(default 3)", CONNECT)
    local_port: int = opt(8642, "port on 127.0.0.1 where the service appears (default 8642)",
                          FORWARD)
    heartbeat_time: float = opt(10.0, "seconds between health probes of the service "
                                "(default 10)", SPEC)
    slurm_job_name: str | None = opt(None, "SLURM job name shared by the chain's jobs "
                                     "(default sp-NAME)", CONNECT, legacy="hpc_job_name")
    max_looks: int = opt(120, "looks for a serving job before `up` gives up (default 120)",
                         FORWARD, legacy="max_attempts_get_server_and_port")
    look_interval: float = opt(5.0, "seconds between those looks (default 5)", FORWARD,
                               legacy="delay_between_server_and_port")
    daemonize: bool = opt(False, "run the forwarder in the background, under a supervisor "
                          "that restarts it (pid and log in ~/.local/state)", FORWARD)
    sbatch_options: list[str] = opt([], "extra sbatch option such as "
                                    "--sbatch-option=--time=2:00:00; repeatable", SPEC,
                                    flag="sbatch_option")
    overlap_minutes: int = opt(_SPEC["overlap_minutes"], "start each successor this many "
                               "minutes before its predecessor's time limit, for handovers "
                               "without a gap", SPEC)
    replicas: int = opt(_SPEC["replicas"], "chains serving side by side, their rollovers "
                        "staggered; new connections go to the one with fewest open "
                        f"(1-{MAX_REPLICAS}, default 1)", SPEC)
    health_path: str = opt(_SPEC["health_path"], "the server's health route (default /health)")
    mode: str = opt(_SPEC["mode"], "direct: login nodes connect to the job's port (default); "
                    "reverse: the job connects to a login node and serves on a private socket "
                    "there, for sites whose login nodes cannot reach compute nodes", SPEC)
    listen: str = opt(_SPEC["listen"], "unix: the server listens on a private socket "
                      "(default); tcp: on a loopback port, for servers that cannot")
    health_timeout: float = opt(_SPEC["health_timeout"], "seconds a server has to become "
                                "healthy")
    max_restarts: int = opt(_SPEC["max_restarts"], "restarts of a failing server within one job")
    warn_seconds: int = opt(_SPEC["warn_seconds"], "seconds before the time limit at which "
                            "SLURM warns a job to hand over (default 90; keep it well under "
                            "the time limit)", SPEC)
    crash_loop_jobs: int = opt(_SPEC["crash_loop_jobs"], "chains or jobs in a row that never "
                               "served before the chain is stopped")
    hold_seconds: float = opt(120.0, "how long a client is held while no job serves")
    on_event: str = opt("", "command run (no shell) with one JSON event on stdin: serving, "
                        "switched, waiting, chain-stopped, time-limit-near; e.g. "
                        "\"curl -sd @- URL\"", FORWARD)
    local_socket: str | None = opt(None, "serve on this Unix socket (mode 0600) instead of "
                                      "127.0.0.1:PORT: on a machine shared with other users, "
                                      "loopback is open to all of them", FORWARD)
    metrics_port: int = opt(0, "serve Prometheus metrics on 127.0.0.1:PORT (default 0: none)",
                            FORWARD)
    waiting_alert_seconds: float = opt(300.0, "an outage this long sends the waiting event "
                                       "(default 300)", FORWARD)

    @property
    def address(self) -> str:
        """Where the service appears here, for logs and messages."""
        return f"unix:{self.local_socket}" if self.local_socket else f"127.0.0.1:{self.local_port}"

    @property
    def url(self) -> str:
        if self.local_socket:
            return f"unix:{self.local_socket} (curl --unix-socket {self.local_socket} http://x/)"
        return f"http://127.0.0.1:{self.local_port}/"

    @property
    def login_nodes(self) -> list[str]:
        return [self.login_node, *self.fallback_login_nodes] if self.login_node else []

    @property
    def job_name(self) -> str:
        return self.slurm_job_name or f"sp-{self.name}"

    @property
    def uses_sandbox(self) -> bool:
        return self.login_node is None


FIELDS = {f.name: f for f in dataclasses.fields(Options)}
# The original tool's names, old -> field: the edge's (toml, flags, run_sync) only.
LEGACY = {f.metadata["legacy"]: f.name for f in FIELDS.values() if f.metadata["legacy"]}


def modern(values: Mapping[str, Any], where: str = "", spell=str) -> dict[str, Any]:
    """`values` with the original tool's names replaced by the fields';
    an option given under both names is an error (`spell` names a key)."""
    out = {k: v for k, v in values.items() if k not in LEGACY}
    for old, new in ((o, n) for o, n in LEGACY.items() if o in values):
        if new in out:
            raise ConfigError(f"{where}{spell(old)} is the old name of {spell(new)}: "
                              "give one of them, not both")
        out[new] = values[old]
    return out


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
    values.update(modern({k: v for k, v in cli.items() if v is not None and v != []}))
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
    unknown = set(section) - set(FIELDS) - set(LEGACY) - {"name"}
    if unknown:
        raise ConfigError(f"{path}: [{key}] has unknown keys: {', '.join(sorted(unknown))}")
    return modern(section, f"{path}: [{key}] ")


def _coerce(key: str, value: Any) -> Any:
    """Strings from a command line become the field's type; wrong types fail."""
    kind = FIELDS[key].type
    try:
        if kind in ("int", "float") and not isinstance(value, bool):
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
    for key in ("retries", "max_looks", "overlap_minutes", "max_restarts"):
        if getattr(options, key) < 0:
            raise ConfigError(f"{key.replace('_', '-')} must not be negative")
    if not 1 <= options.replicas <= MAX_REPLICAS:
        raise ConfigError(f"replicas {options.replicas}: choose 1-{MAX_REPLICAS}")
    for key in ("heartbeat_time", "look_interval", "hold_seconds",
                "health_timeout", "crash_loop_jobs", "waiting_alert_seconds"):
        if getattr(options, key) <= 0:
            raise ConfigError(f"{key.replace('_', '-')} must be positive")
    for host in filter(None, [*options.login_nodes, options.jumphost]):
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
    if options.local_socket is not None:
        where = Path(options.local_socket).expanduser()
        if not where.parent.is_dir():
            raise ConfigError(f"local-socket {options.local_socket}: no such directory "
                              f"{where.parent}")
        if len(str(where)) > 100:  # sun_path holds 108 bytes
            raise ConfigError(f"local-socket {options.local_socket}: longer than 100 characters")
    if options.ssh_config and not Path(options.ssh_config).expanduser().is_file():
        raise ConfigError(f"ssh-config {options.ssh_config}: no such file")


def check_script_dir(path: Path) -> None:
    if not (path / "slurm.sbatch").is_file():
        raise ConfigError(f"app-dir {path}: no slurm.sbatch there (start from the hpc/ example)")


def check_port_free(port: int) -> None:
    """Fail early and clearly, before anything on the cluster is touched."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise ConfigError(f"local-port {port} is already in use on 127.0.0.1 "
                              "(pick another with --local-port)") from None
