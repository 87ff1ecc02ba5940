"""The worker's watchdog: a watched call past its bound ends the process
(exit 3, stacks in the log), and the supervisor starts a new worker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

from local import supervisor
from local.config import Options
from local.remote import Site
from local.watchdog import STUCK, Watchdog
from remote_agent.listener import tcp_socket


def test_only_a_call_past_its_bound_is_stuck():
    stuck: list = []
    dog = Watchdog(on_stuck=lambda what, bound: stuck.append((what, bound)))
    with dog.watch("squeue on login1", 3600):
        dog.check()
    with dog.watch("sbatch on login2", 0):
        dog.check()
    dog.check()  # ended: no longer watched
    assert stuck == [("sbatch on login2", 0)]


def test_a_site_command_is_watched_with_its_own_bound(monkeypatch):
    """The bound grows with the command's timeout (sbatch under the lock waits longer)."""
    site = Site(Options(login_node="login1"))
    watched: list = []

    def command_on(host, command, stdin, timeout):
        site.watchdog.check()
        watched.extend(site.watchdog._watched.values())
        return "done"
    monkeypatch.setattr(site, "_command_on", command_on)
    assert site._run_on("login1", "squeue -h", None, 30) == "done"
    assert site._run_on("login1", "python3 -m remote_agent lock", None, 130) == "done"
    assert [(what, bound) for _, what, bound in watched] == [
        ("squeue on login1", 270), ("python3 on login1", 470)]
    assert site.watchdog._watched == {}


def test_a_hang_ends_the_process_with_its_stacks():
    code = textwrap.dedent("""
        import logging, sys, time
        logging.basicConfig(stream=sys.stderr)
        from local.watchdog import Watchdog
        dog = Watchdog(every=0.05)
        dog.start()
        with dog.watch("squeue on login1", 0.1):
            time.sleep(60)
    """)
    ended = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=30, cwd=os.getcwd())
    assert ended.returncode == STUCK, ended.stderr
    assert "state=stuck call='squeue on login1' bound=0 action=exit code=3" in ended.stderr
    assert 'line 8 in <module>' in ended.stderr  # where it waited: the sleep


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
        os._exit(supervisor.supervise([sock], worker))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 2
    assert count.read_text() == "xx"
