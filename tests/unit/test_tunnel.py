import os
import shlex
import tempfile
from pathlib import Path

import pytest

from local import paths, tunnel
from local.config import Options


def test_runtime_dir_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = paths.runtime_dir("svc")
    assert path == tmp_path / f"slurm-persist-{os.getuid()}" / "svc"
    assert os.stat(path.parent).st_mode & 0o777 == 0o700


def test_runtime_dir_others_can_enter_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    shared = tmp_path / f"slurm-persist-{os.getuid()}"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    with pytest.raises(tunnel.TunnelError, match="not a directory private to you"):
        paths.runtime_dir("svc")


def test_ssh_command_keeps_host_key_checking():
    argv = tunnel.ssh_base(Options(login_node="login1", jumphost="jump",
                                   jumphost_username="svc", username="alice",
                                   ssh_config="/etc/ssh/ssh_config"))
    assert argv == ["ssh", "-F", "/etc/ssh/ssh_config", "-J", "svc@jump", "-l", "alice",
                    "-o", "BatchMode=yes"]
    assert not any("StrictHostKeyChecking" in a for a in argv)


@pytest.fixture
def no_runtime_dir(tmp_path, monkeypatch):
    """No XDG_RUNTIME_DIR: the fallback lives in a temp dir shared by all users."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path / f"slurm-persist-{os.getuid()}"


def test_without_xdg_runtime_dir_a_private_dir_in_tmp(no_runtime_dir):
    assert paths.runtime_dir("svc") == no_runtime_dir / "svc"
    assert os.stat(no_runtime_dir).st_mode & 0o777 == 0o700


@pytest.mark.parametrize("squatted", ["loose", "symlink"])
def test_a_name_taken_first_in_tmp_is_passed_by(no_runtime_dir, tmp_path, squatted):
    """Another user may create /tmp/slurm-persist-<uid> first (a dir they
    own, or a link to theirs): never used, and no reason to stop."""
    if squatted == "loose":
        no_runtime_dir.mkdir(mode=0o777)
        os.chmod(no_runtime_dir, 0o777)
    else:
        (tmp_path / "theirs").mkdir()
        no_runtime_dir.symlink_to(tmp_path / "theirs")
    path = paths.runtime_dir("svc")
    assert path.parent.parent == tmp_path and path.parent != no_runtime_dir
    assert path.parent.name.startswith(f"slurm-persist-{os.getuid()}-")
    assert os.lstat(path.parent).st_mode & 0o777 == 0o700
    assert not (tmp_path / "theirs" / "svc").exists()


def test_through_our_own_jumphost_master_instead_of_proxyjump():
    """The jumphost's hop goes through a master that opened a session
    (TCP_NODELAY there), as a ProxyCommand the shell reads back intact."""
    options = Options(login_node="login1", jumphost="jump", jumphost_username="svc",
                      username="alice", ssh_config="/etc/ssh/my config")
    argv = tunnel.ssh_base(options, via=Path("/run/x/c0j"))
    assert argv[:3] == ["ssh", "-F", "/etc/ssh/my config"] and "-J" not in argv
    assert argv[argv.index("-l") + 1] == "alice"
    proxy = argv[argv.index("-o") + 1]
    assert proxy.startswith("ProxyCommand=")
    assert shlex.split(proxy.removeprefix("ProxyCommand=")) == [
        "ssh", "-F", "/etc/ssh/my config", "-l", "svc", "-o", "BatchMode=yes",
        "-S", "/run/x/c0j", "-W", "[%h]:%p", "jump"]
    assert tunnel.ssh_base(Options(login_node="login1"), via=Path("/run/x/c0j")) == [
        "ssh", "-o", "BatchMode=yes"]  # no jumphost: nothing to go through
