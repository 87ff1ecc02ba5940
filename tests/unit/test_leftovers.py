import asyncio
import socket
import subprocess
import sys

from local import daemon, leftovers, paths, tunnel
from local.config import Options

OPTIONS = Options(login_node="login1")


def test_a_dead_workers_sockets_are_swept_login_masters_first(tmp_path, monkeypatch):
    """What a killed worker left: each control socket is asked to exit, a
    login master before its jumphost's (else it ends on its own first and
    does not answer), then removed; forwards' sockets just go."""
    bound = []
    for name in ("c0j", "c1", "c0", "c0-f1.sock", "c0-f2.sock"):
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(tmp_path / name))
        bound.append(sock)
    (tmp_path / "c9").write_text("not a socket")
    asked = []

    async def answers_but_c1(options, control, login, command):
        asked.append((control.name, command, control.exists()))
        return 255 if control.name == "c1" else 0
    monkeypatch.setattr(leftovers, "ask_master", answers_but_c1)
    assert asyncio.run(leftovers.end_left_masters(OPTIONS, tmp_path)) == 2
    assert asked == [("c0", "exit", True), ("c1", "exit", True), ("c0j", "exit", True)]
    assert [p.name for p in tmp_path.iterdir()] == ["c9"]
    for sock in bound:
        sock.close()


def test_the_sweep_reads_back_the_names_a_tunnel_gives(tmp_path):
    """The names come from tunnel.py's helpers, the ones Tunnel and the
    router use: a login master, an extra one, the jumphost master and a
    forward are each found as what they are."""
    login, extra = tunnel.control_socket(tmp_path, 0), tunnel.control_socket(tmp_path, 10001)
    names = [login, extra, tunnel.jump_socket(login), tunnel.forward_socket(extra, 3)]
    bound = []
    for path in names:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        bound.append(sock)
    assert tunnel.control_sockets(tmp_path) == [login, extra, names[2]]
    assert tunnel.forward_sockets(tmp_path) == [names[3]]
    assert tunnel.forward_sockets(tmp_path, login.name) == []
    for sock in bound:
        sock.close()


def test_asking_a_socket_no_master_listens_on_is_answered_255(tmp_path):
    """The real ssh client on a socket left by a master that is gone."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "c0"))
        code = asyncio.run(tunnel.ask_master(OPTIONS, tmp_path / "c0", "left-over", "exit"))
    assert code == 255


def test_a_process_naming_a_socket_here_is_ended_when_no_socket_is_left(tmp_path):
    """A master killed while it started has no control socket yet: found
    by its command line (pgrep), and signalled. One naming another
    service's directory is left alone."""
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             "-M", "-S", f"{tmp_path}/c0"])
    other = tmp_path.parent / f"{tmp_path.name}-other"
    theirs = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                               "-M", "-S", f"{other}/c0"])
    try:
        assert asyncio.run(leftovers.end_left_masters(OPTIONS, tmp_path)) == 1
        assert ours.wait(timeout=10) == -15
        assert theirs.poll() is None
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait()


def test_down_sweeps_only_once_no_forwarder_holds_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "run").mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(daemon, "_locks", {})
    options = Options(login_node="login1", name="svc")
    left = paths.runtime_dir("svc") / "c0"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(left))
        holder = subprocess.Popen(
            [sys.executable, "-c", "import fcntl, os, sys, time; "
             "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
             "print(flush=True); time.sleep(60)", str(paths.lock_file("svc"))],
            stdout=subprocess.PIPE)
        try:
            holder.stdout.readline()  # the lock is held
            assert leftovers.after_down(options) == 0 and left.exists()  # a forwarder's own
        finally:
            holder.kill()
            holder.wait()
        assert leftovers.after_down(options) == 0 and not left.exists()  # none answered; gone
