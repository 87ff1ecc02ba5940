"""daemonize() with a real double fork."""

from __future__ import annotations

import threading
import time

from helpers import wait_for
from local import daemon


def test_the_daemon_is_forked_once_no_other_thread_holds_a_lock(tmp_path, monkeypatch):
    """A thread of `up`'s inside a lock at the fork (paramiko's, ending a
    closed connection, in cryptography) would leave that lock held in the
    daemon for good: its first key exchange hung."""
    monkeypatch.setattr(daemon, "log_path", lambda name: tmp_path / "log")
    lock, result = threading.Lock(), tmp_path / "result"

    def closing_connection():
        with lock:
            time.sleep(0.3)

    thread = threading.Thread(target=closing_connection)
    thread.start()
    time.sleep(0.05)  # it holds the lock now

    def body() -> int:
        result.write_text("free" if lock.acquire(timeout=2) else "held")
        return 0

    assert daemon.daemonize("test", body) > 0
    wait_for("the daemon's answer", result.exists, timeout=10, every=0.05)
    assert result.read_text() == "free"
