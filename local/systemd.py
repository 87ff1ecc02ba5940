"""`slurm-persist systemd`: user units that keep a service forwarded for months.

For a machine that should serve a team (a VM): systemd holds the port
(the .socket unit) and starts `slurm-persist up` on it (the .service
unit), which finds the socket through LISTEN_FDS, so the port accepts
even while the forwarder restarts (Restart=always). The service unit runs
in the project directory, so its slurm-persist.toml applies.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from .config import Options


def unit_name(options: Options) -> str:
    return f"slurm-persist-{options.name}"


def units(options: Options, workdir: Path, command: list[str]) -> dict[str, str]:
    name = unit_name(options)
    socket_unit = f"""[Unit]
Description=slurm-persist {options.name}: 127.0.0.1:{options.local_port}

[Socket]
ListenStream=127.0.0.1:{options.local_port}
# As the forwarder's own listener: a burst of held clients fits.
Backlog=1024

[Install]
WantedBy=sockets.target
"""
    service_unit = f"""[Unit]
Description=slurm-persist {options.name}: 127.0.0.1:{options.local_port} to its SLURM jobs
Requires={name}.socket
After=network-online.target

[Service]
WorkingDirectory={workdir}
ExecStart={shlex.join([*command, "up", "--name", options.name])}
Restart=always
RestartSec=2

[Install]
WantedBy=default.target
"""
    return {f"{name}.socket": socket_unit, f"{name}.service": service_unit}


def write(options: Options, directory: Path, workdir: Path, command: list[str]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in units(options, workdir, command).items():
        path = directory / filename
        path.write_text(text)
        written.append(path)
    return written
