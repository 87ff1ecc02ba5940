"""The supervisor with real forked workers and a real listening socket."""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from helpers import wait_for
from local import paths, supervisor
from local.sockets import from_systemd
from local.status_file import Status
from remote_agent.listener import tcp_socket


def test_a_dead_worker_is_replaced_on_the_same_socket(tmp_path):
    """Worker 1 dies (kill -9 would do the same); worker 2 answers a client
    that connected while no worker ran; then it ends for good (exit 2)."""
    count = tmp_path / "runs"
    sock = tcp_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]

    def worker(sockets):
        runs = len(count.read_text()) if count.exists() else 0
        count.write_text("x" * (runs + 1))
        if runs == 0:
            os._exit(137)
        return answer_once(sockets)

    client = socket.create_connection(("127.0.0.1", port), timeout=10)  # before any worker
    pid = os.fork()
    if pid == 0:
        os._exit(supervisor.supervise([sock], worker))
    answer = client.recv(100)
    _, status = os.waitpid(pid, 0)
    assert answer.startswith(b"worker ") and os.waitstatus_to_exitcode(status) == 2
    assert count.read_text() == "xx"


def test_systemd_sockets_are_taken_only_by_the_process_they_are_for():
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert from_systemd(env) == [] and "LISTEN_FDS" in env


def test_a_socket_passed_as_systemd_does_is_found_at_descriptor_3():
    """As systemd-socket-activate starts a service: the socket at fd 3,
    LISTEN_PID set to the service's own pid (here by the shell's exec)."""
    sock = tcp_socket("127.0.0.1", 0)
    script = ("from local.sockets import from_systemd; import os; "
              "s = from_systemd(); print(s[0].getsockname()[1], 'LISTEN_FDS' in os.environ)")
    shell = f'LISTEN_PID=$$ LISTEN_FDS=1 exec {sys.executable} -c "{script}" 3<&{sock.fileno()}'
    out = subprocess.run(["bash", "-c", shell], pass_fds=[sock.fileno()], capture_output=True,
                         text=True, timeout=30, cwd=str(Path(__file__).resolve().parents[2]))
    assert out.stdout.split() == [str(sock.getsockname()[1]), "False"], out.stderr
    sock.close()


def test_a_stop_during_the_pause_before_a_restart_starts_no_worker(tmp_path, monkeypatch):
    """down's SIGTERM while the supervisor waits to replace a dying worker."""
    import signal
    import time as clock
    runs = tmp_path / "runs"
    monkeypatch.setattr(supervisor, "PAUSE_FIRST", 1.0)

    def worker(sockets):
        runs.write_text((runs.read_text() if runs.exists() else "") + "x")
        os._exit(1)  # dies at once, every time: the second death waits PAUSE_FIRST

    pid = os.fork()
    if pid == 0:
        os._exit(supervisor.supervise([], worker))
    clock.sleep(0.5)  # two quick deaths, now in the pause
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and runs.read_text() == "xx"


def test_sigusr1_to_the_supervisor_reaches_its_worker(tmp_path):
    """`up` gives up on a daemon whose worker never said anything: SIGUSR1
    to the daemon (the supervisor) must reach the worker, which writes
    where each of its threads waits (service.foreground registers it)."""
    stacks = tmp_path / "stacks"

    def setup() -> None:
        faulthandler.register(signal.SIGUSR1, file=stacks.open("w"), all_threads=True)

    pid, _ = waiting_worker(tmp_path, setup)
    try:
        os.kill(pid, signal.SIGUSR1)
        wait_for("the stacks", lambda: "waiting_where_nothing_logs" in stacks.read_text(),
                 timeout=10, every=0.05)
    finally:
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # the supervisor itself lived on


def test_a_worker_that_ignores_sigterm_is_killed_and_the_supervisor_ends(tmp_path, monkeypatch):
    """A thread stuck in C (OpenSSL's lock, seen) keeps a worker from ending
    on SIGTERM: left alone it outlived `down` and held the port for good."""
    monkeypatch.setattr(supervisor, "STOP_GRACE", 0.5)
    pid, worker = waiting_worker(tmp_path, lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))
    try:
        os.kill(pid, signal.SIGTERM)
        wait_for("the supervisor's end", lambda: os.waitpid(pid, os.WNOHANG)[0] == pid,
                 timeout=10, every=0.05)
    finally:
        for each in (pid, worker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGKILL)
    assert not Path(f"/proc/{worker}").exists()  # killed, and reaped by the supervisor


def waiting_worker(tmp_path, setup) -> tuple[int, int]:
    """supervise() in a child, over a worker that runs setup() and then
    waits for ever; (the supervisor's pid, the worker's) once it waits."""
    ready = tmp_path / "worker"

    def worker(sockets):
        setup()
        ready.with_suffix(".tmp").write_text(str(os.getpid()))
        ready.with_suffix(".tmp").rename(ready)
        waiting_where_nothing_logs()
        return 2

    pid = os.fork()
    if pid == 0:
        os._exit(supervisor.supervise([tcp_socket("127.0.0.1", 0)], worker))
    wait_for("the worker", ready.exists, timeout=10, every=0.05)
    return pid, int(ready.read_text())


def waiting_where_nothing_logs() -> None:
    while True:
        time.sleep(0.05)


def test_an_adopted_worker_is_watched_then_replaced_on_the_same_socket(tmp_path, monkeypatch):
    """A new supervisor of an orphaned worker (orphaned.py): the worker is
    not its child, so it cannot wait for it; once it dies, a worker of its
    own answers on the same socket, also a client that connected meanwhile."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    sock = tcp_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    pid = os.fork()
    if pid == 0:
        os._exit(supervisor.supervise([sock], answer_once, supervisor.Adopted(orphan.pid, "svc")))
    try:
        time.sleep(1)  # the supervisor watches the orphan; none of its own yet
        assert subprocess.run(["pgrep", "-P", str(pid)], capture_output=True).stdout == b""
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        orphan.kill()
        orphan.wait()
        answer = client.recv(100)
        _, status = os.waitpid(pid, 0)
    finally:
        orphan.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert answer.startswith(b"worker ") and answer != f"worker {orphan.pid}".encode()
    assert os.waitstatus_to_exitcode(status) == 2


def test_down_reaches_an_adopted_worker_and_the_supervisor_ends(tmp_path, monkeypatch):
    """SIGTERM to the new supervisor (what `down` sends) goes to the
    adopted worker; the supervisor ends once that worker has, and starts
    no other."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    pid, started = adopting(orphan.pid, tmp_path)
    try:
        os.kill(pid, signal.SIGTERM)
        assert orphan.wait(timeout=10) == -signal.SIGTERM
        _, status = os.waitpid(pid, 0)
    finally:
        orphan.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert os.waitstatus_to_exitcode(status) == 0 and not started.exists()


def test_an_adopted_worker_that_ended_as_it_meant_to_is_not_replaced(tmp_path, monkeypatch):
    """Its status says stopped (the chain stopped): no worker of the new
    supervisor's own, which would only find the chain stopped again."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    paths.status_file("svc").write_text(json.dumps(dataclasses.asdict(
        Status(orphan.pid, "svc", 0, state="stopped", message="the chain is stopped"))))
    pid, started = adopting(orphan.pid, tmp_path)
    try:
        orphan.wait(timeout=10)
        _, status = os.waitpid(pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert os.waitstatus_to_exitcode(status) == 0 and not started.exists()


def adopting(orphan: int, tmp_path) -> tuple[int, Path]:
    """supervise() in a child, adopting orphan, over a worker that only
    marks that it started; (its pid, the mark) once its handlers are set."""
    started, ready = tmp_path / "started", tmp_path / "ready"
    pid = os.fork()
    if pid == 0:
        os._exit(supervisor.supervise([tcp_socket("127.0.0.1", 0)],
                                      lambda _: started.write_text("x") or 2,
                                      supervisor.Adopted(orphan, "svc"),
                                      ready=lambda: ready.write_text("x")))
    wait_for("the supervisor's handlers", ready.exists, timeout=10, every=0.05)
    return pid, started


def answer_once(sockets) -> int:
    """A worker that tells one client its pid, then ends for good."""
    listening = sockets[0]
    listening.setblocking(True)
    conn, _ = listening.accept()
    conn.sendall(f"worker {os.getpid()}".encode())
    conn.close()
    return 2
