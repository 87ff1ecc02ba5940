"""daemon.spawn() with a real double fork and exec."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading

from helpers import wait_for
from local import daemon

# The daemon under test: it reports what it was started with, on its
# stdout (the log), then keeps a child of its own and waits.
REPORTER = """
import json, os, signal, subprocess, sys
from local import daemon
handed = daemon.payload()
child = subprocess.Popen(["sleep", "60"], close_fds=False)  # would inherit an inheritable fd
print(json.dumps({
    "handed": handed, "still_in_env": daemon.HANDED in os.environ, "pid": os.getpid(),
    "session": os.getsid(0), "stdin": os.readlink("/proc/self/fd/0"),
    "cwd": os.getcwd(), "child": child.pid, "pythonpath": os.environ.get("PYTHONPATH"),
    "ignored": [s.name for s in (signal.SIGHUP, signal.SIGUSR1)
                if signal.getsignal(s) == signal.SIG_IGN],
    "held_by_up": "held_by_up" in sys.modules}), flush=True)
signal.pause()
"""


def started(tmp_path, monkeypatch, hold: bool) -> dict:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(daemon, "_locks", {})
    (tmp_path / "reporter.py").write_text(REPORTER)
    if hold:
        assert daemon.hold_lock("test")
    pid = daemon.spawn("test", "reporter", "the options")
    log = daemon.log_path("test")
    try:
        wait_for("the daemon's report", lambda: log.exists() and log.read_text().strip(),
                 timeout=30, every=0.05)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    report = json.loads(log.read_text())
    assert report["pid"] == pid
    return report


def stop(report: dict) -> None:
    for pid in (report["pid"], report["child"]):
        with contextlib.suppress(ProcessLookupError):  # reaped already
            os.kill(pid, signal.SIGKILL)


def test_the_daemon_is_a_new_interpreter_in_a_session_of_its_own(tmp_path, monkeypatch):
    """Not a fork of `up`: a thread of `up`'s (paramiko's, ending a closed
    connection, inside cryptography) left its lock held in a forked daemon,
    whose first key exchange then hung. Nothing of the caller's process,
    threads, locks or modules, reaches the daemon."""
    lock, release = threading.Lock(), threading.Event()

    def holding() -> None:
        with lock:
            release.wait()

    thread = threading.Thread(target=holding)
    thread.start()  # holds the lock until the test ends, as a hung thread would
    sys.modules["held_by_up"] = sys.modules[__name__]
    try:
        report = started(tmp_path, monkeypatch, hold=False)
    finally:
        del sys.modules["held_by_up"]
        release.set()
        thread.join()
    try:
        assert report["handed"] == "the options"
        assert not report["still_in_env"]  # its children (ssh, hooks) do not see it
        # A session of its own, whose leader has gone: no terminal can reach it.
        assert report["session"] not in (os.getsid(0), report["pid"])
        assert report["stdin"] == os.devnull and report["cwd"] == "/"
        # Until it sets its own: SIGUSR1's default would end a daemon still importing.
        assert report["ignored"] == ["SIGHUP", "SIGUSR1"]
        assert report["pythonpath"] == str(tmp_path)  # its hooks' Python is not ours
        assert not report["held_by_up"]  # not a fork: nothing of the caller's process
    finally:
        stop(report)


def test_the_daemon_holds_the_lock_of_up_and_its_children_do_not(tmp_path, monkeypatch):
    """One forwarder per service: the daemon holds the lock `up` took, after
    `up` has ended; an ssh master that outlives the daemon must not, or
    every later `up` would wait for an `up` that is not there."""
    report = started(tmp_path, monkeypatch, hold=True)
    try:
        os.close(daemon._locks.pop("test"))  # `up` has ended
        assert not daemon.hold_lock("test")  # the daemon holds it
        os.kill(report["pid"], signal.SIGKILL)
        wait_for("the daemon's end", lambda: not daemon.alive(report["pid"]), timeout=10,
                 every=0.05)
        assert daemon.alive(report["child"])
        assert daemon.hold_lock("test")  # its child, still running, does not
    finally:
        stop(report)
