"""Running the forwarder in the background: a real daemon (double fork,
new session, no terminal), with a pid file and a log file in the service's
local state directory, so `status` and `down` can find it later.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .paths import lock_file, log_file, pid_file

log = logging.getLogger("slurm_persist.daemon")

# How long the threads that `up` leaves behind get to end before the fork.
# paramiko's Transport.close() does not join its thread (its loop stops at
# once on a closed packetizer): after `up`'s SSH work 3 were still running,
# gone 44 ms later. The bound keeps `up` from waiting for ever on a thread
# that never ends; such a thread is logged, and the fork goes ahead.
THREADS_GONE = 10.0


def hold_lock(name: str) -> bool:
    """Take the service's forwarder lock for the rest of this process's life
    (and its daemon's: the lock goes with the open file into the fork).
    False when another process holds it: one forwarder per service and
    state folder, however many `up` start at once."""
    fd = os.open(lock_file(name), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    return True  # fd stays open on purpose: closing it would release the lock


def pid_path(name: str) -> Path:
    return pid_file(name)


def log_path(name: str) -> Path:
    return log_file(name)


def running_pid(name: str) -> int | None:
    """The live forwarder's pid, or None (a stale pid file is removed)."""
    path = pid_path(name)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        pid = 0
    if pid and alive(pid):
        return pid
    path.unlink(missing_ok=True)
    return None


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent that never reaps it."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc here: kill(0) is all we can know
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def write_pid(name: str) -> None:
    pid_path(name).write_text(f"{os.getpid()}\n")


def clear_pid(name: str) -> None:
    if running_pid(name) == os.getpid():
        pid_path(name).unlink(missing_ok=True)


def daemonize(name: str, body: Callable[[], int]) -> int:
    """Fork; the grandchild runs body() detached, logging to the log file.
    Returns the daemon's pid in the calling process."""
    _wait_for_other_threads(THREADS_GONE)
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            return int(pipe.read() or 0)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.write(write_end, str(os.getpid()).encode())
    os.close(write_end)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDONLY)
    log = os.open(log_path(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    code = 1
    try:
        code = body()
    except Exception as exc:  # the log is the only place left to say why
        print(f"slurm-persist: error: {exc}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait_for_other_threads(timeout: float) -> None:
    """Fork with this thread alone: a thread inside OpenSSL at the fork
    leaves its lock held in the child for good. Seen once (bench): a
    paramiko thread of `up`'s, still ending its closed connection, was
    inside cryptography at the fork; the daemon's worker then hung in its
    first key exchange, and the service never served."""
    deadline = time.monotonic() + timeout
    others = [each for each in threading.enumerate() if each is not threading.current_thread()]
    for thread in others:
        thread.join(max(0.0, deadline - time.monotonic()))
    left = [each.name for each in others if each.is_alive()]
    if left:
        log.warning("daemon=fork threads_left=%s waited=%.0fs", ",".join(left), timeout)


def stop(name: str, timeout: float = 15) -> int | None:
    """SIGTERM the forwarder and wait for it; returns its pid if one ran."""
    pid = running_pid(name)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    pid_path(name).unlink(missing_ok=True)
    return pid
