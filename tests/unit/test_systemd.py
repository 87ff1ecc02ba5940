"""The user units `slurm-persist systemd` writes."""

from __future__ import annotations

import configparser
from pathlib import Path

from local import systemd
from local.config import Options


def test_the_socket_holds_the_port_and_the_service_runs_up_on_it(tmp_path):
    options = Options(name="model", local_port=8642)
    written = systemd.write(options, tmp_path / "user", Path("/srv/model"),
                            ["/venv/bin/slurm-persist"])
    assert [p.name for p in written] == ["slurm-persist-model.socket",
                                        "slurm-persist-model.service"]
    sock, service = (configparser.ConfigParser(), configparser.ConfigParser())
    sock.read(written[0])
    service.read(written[1])
    assert sock["Socket"]["ListenStream"] == "127.0.0.1:8642"
    assert service["Service"]["ExecStart"] == "/venv/bin/slurm-persist up --name model"
    assert service["Service"]["WorkingDirectory"] == "/srv/model"
    assert service["Service"]["Restart"] == "always"
    assert service["Unit"]["Requires"] == "slurm-persist-model.socket"
