import os

import pytest

from local import tunnel
from local.config import Options


def test_runtime_dir_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = tunnel.runtime_dir("svc")
    assert path == tmp_path / f"slurm-persist-{os.getuid()}" / "svc"
    assert os.stat(path.parent).st_mode & 0o777 == 0o700


def test_runtime_dir_others_can_enter_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    shared = tmp_path / f"slurm-persist-{os.getuid()}"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    with pytest.raises(tunnel.TunnelError, match="not a directory private to you"):
        tunnel.runtime_dir("svc")


def test_ssh_command_keeps_host_key_checking():
    argv = tunnel.ssh_base(Options(hpc_system_url="login1", jumphost_url="jump",
                                   jumphost_username="svc", username="alice",
                                   ssh_config="/etc/ssh/ssh_config"))
    assert argv == ["ssh", "-F", "/etc/ssh/ssh_config", "-J", "svc@jump", "-l", "alice",
                    "-o", "BatchMode=yes"]
    assert not any("StrictHostKeyChecking" in a for a in argv)
