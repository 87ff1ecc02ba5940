"""The worker's watchdog: a watched call past its bound is cut loose
(unstick), and one still there after GRACE ends the process (exit 3, its
stacks in the log), which the supervisor replaces."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from local import supervisor, watchdog
from local.config import Options
from local.launch import LOCK_WAIT
from local.remote import COMMAND_TIMEOUT, Site
from local.watchdog import STUCK, Watchdog
from remote_agent.listener import tcp_socket

ROOT = Path(__file__).resolve().parents[2]


def recording() -> tuple[Watchdog, list]:
    stuck: list = []
    return Watchdog(on_stuck=lambda what, bound: stuck.append((what, bound))), stuck


def test_only_a_call_past_its_bound_is_stuck():
    dog, stuck = recording()
    with dog.watch("squeue on login1", 3600):
        dog.check()
    with dog.watch("sbatch on login2", -1):
        dog.check()
    dog.check()  # ended: no longer watched
    assert stuck == [("sbatch on login2", -1)]
    assert dog.watching() == []


def test_a_stuck_call_is_unstuck_once():
    dog, stuck = recording()
    unstuck: list = []
    with dog.watch("squeue on login1", -1, unstick=lambda: unstuck.append(1)):
        dog.check()
        dog.check()  # within GRACE of the first
    assert (unstuck, stuck) == ([1], [])


def test_a_call_still_stuck_after_grace_ends_the_process(monkeypatch):
    monkeypatch.setattr(watchdog, "GRACE", -1)
    dog, stuck = recording()
    unstuck: list = []
    with dog.watch("squeue on login1", -1, unstick=lambda: unstuck.append(1)):
        dog.check()
        assert (unstuck, stuck) == ([1], [])
        dog.check()
    assert (unstuck, stuck) == ([1], [("squeue on login1", -1)])


def test_a_site_command_is_watched_with_its_own_bound(monkeypatch):
    """The bound grows with the command's time-out: the lock waits longest."""
    site = Site(Options(login_node="login1"))
    site.watchdog, stuck = recording()
    watched: list = []

    def command_on(host, command, stdin, timeout, once):
        site.watchdog.check()
        watched.extend(site.watchdog.watching())
        return "done"
    monkeypatch.setattr(site, "_command_on", command_on)
    lock = LOCK_WAIT + COMMAND_TIMEOUT
    assert site._run_on("login1", "squeue -h", None, COMMAND_TIMEOUT, False) == "done"
    assert site._run_on("login1", "env A=1 python3 -m remote_agent lock", None, lock,
                        False) == "done"
    assert watched == [("squeue -h on login1", 210 + 2 * COMMAND_TIMEOUT),
                       ("env A=1 python3 -m remote_agent lock on login1", 210 + 2 * lock)]
    assert site.watchdog.watching() == [] and stuck == []


def test_a_hang_ends_the_process_with_its_stacks():
    code = textwrap.dedent("""
        import time
        from local.watchdog import Watchdog
        dog = Watchdog(every=0.05)
        dog.start()
        with dog.watch("squeue on login1", 0.1):
            time.sleep(60)
    """)
    ended = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=30, cwd=ROOT)
    assert ended.returncode == STUCK, ended.stderr
    assert "state=stuck call='squeue on login1' bound=0 action=exit code=3" in ended.stderr
    assert 'File "<string>", line 7 in <module>' in ended.stderr  # where it waited: the sleep


def test_a_stuck_worker_is_replaced(tmp_path):
    """Worker 1 hangs in a watched call; the supervisor starts worker 2."""
    count = tmp_path / "runs"
    sock = tcp_socket("127.0.0.1", 0)

    def worker(sockets: list[socket.socket]) -> int:
        runs = len(count.read_text()) if count.exists() else 0
        count.write_text("x" * (runs + 1))
        if runs == 0:
            dog = Watchdog(every=0.05)
            dog.start()
            with dog.watch("squeue on login1", 0.1):
                time.sleep(60)
        return 2

    pid = os.fork()
    if pid == 0:
        try:
            os._exit(supervisor.supervise([sock], worker))
        finally:
            os._exit(1)  # never back into pytest in the child
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 2
    assert count.read_text() == "xx"
