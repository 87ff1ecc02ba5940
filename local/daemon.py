"""Running the forwarder in the background: a real daemon (double fork,
new session, no terminal, a new interpreter), with a pid file and a log
file in the service's local state directory, so `status` and `down` can
find it later.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from pathlib import Path

from .paths import lock_file, log_file, pid_file

# The environment variables that carry spawn()'s payload, and the
# forwarder lock's file descriptor ("FD:SERVICE"), into the daemon.
HANDED, LOCK_FD = "SLURM_PERSIST_DAEMON", "SLURM_PERSIST_LOCK_FD"
_locks: dict[str, int] = {}  # service -> the fd that holds its lock in this process


def hold_lock(name: str) -> bool:
    """Take the service's forwarder lock for the rest of this process's life
    (and its daemon's: spawn() hands the open file on through the exec).
    False when another process holds it: one forwarder per service and
    state folder, however many `up` start at once. True again in the
    process that holds it (a second `local.run` after the first ended)."""
    if name in _locks:
        return True
    fd = os.open(lock_file(name), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _locks[name] = fd
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


def spawn(name: str, module: str, handed: str, keep: tuple[int, ...] = ()) -> int:
    """Run module as `__main__` in a new interpreter, as the service's
    daemon (double fork, new session, no terminal, its output to the log
    file), with `handed` in its environment for payload(); returns its pid.
    The service's lock, if this process holds it, and the descriptors in
    keep stay open in the daemon, at the same numbers.

    A new interpreter, not a fork of this process: a fork keeps whatever
    `up`'s threads held at that instant. Seen in the benchmark: a paramiko
    thread of `up`'s, ending its closed connection, was inside cryptography
    at the fork; the lock stayed held in the daemon, whose worker hung in
    its first look at the cluster (no log line for 120 s). Joining `up`'s
    threads before the fork was not enough: 1 of 46 daemons on the sandbox
    still hung so, gdb showing the worker's thread in OpenSSL's
    CRYPTO_THREAD_write_lock (ossl_init_thread_start). Between the forks
    and the exec only system calls run here."""
    # The code `up` runs, not another installed copy; PYTHONPATH is left
    # alone, as the daemon's children (hooks, ssh) inherit it.
    root = str(Path(__file__).resolve().parent.parent)
    argv = [sys.executable, "-c", "import runpy, sys; sys.path.insert(0, sys.argv[1]); "
            "runpy.run_module(sys.argv[2], run_name='__main__', alter_sys=True)", root, module]
    env = {**os.environ, HANDED: handed}
    lock = _locks.get(name)
    if lock is not None:
        env[LOCK_FD] = f"{lock}:{name}"
    log_fd = os.open(log_path(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    read_end, write_end = os.pipe()
    first = os.fork()
    if first > 0:
        os.close(write_end)
        os.close(log_fd)
        with os.fdopen(read_end) as pipe:
            pid = int(pipe.read() or 0)
        os.waitpid(first, 0)  # the middle process ends at once; no zombie is left behind
        if not pid:
            raise RuntimeError("the daemon did not start (the reason is printed above)")
        return pid
    try:
        os.close(read_end)
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        os.write(write_end, str(os.getpid()).encode())
        os.close(write_end)
        os.chdir("/")
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        for fd in (*keep, *([lock] if lock is not None else [])):
            os.set_inheritable(fd, True)  # the daemon makes them close-on-exec again
        # Ignored until the daemon sets its own handlers (kept across the
        # exec): SIGUSR1's default would end a daemon still importing.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        os.execve(argv[0], argv, env)
    except BaseException as exc:  # the log is the only place left to say why
        os.write(2, f"slurm-persist: error: cannot start the daemon: {exc}\n".encode())
    os._exit(127)


def payload() -> str:
    """What spawn() handed this daemon; taken out of the environment, so
    that the daemon's own children (ssh, hooks) do not see it. They do not
    get the lock either: an ssh master that outlived the daemon would hold
    it, and every later `up` would wait for an `up` that is not there. The
    lock counts as held here, for a spawn() of this daemon's own."""
    lock = os.environ.pop(LOCK_FD, None)
    if lock is not None:
        fd, _, name = lock.partition(":")
        os.set_inheritable(int(fd), False)
        _locks[name] = int(fd)
    return os.environ.pop(HANDED)


def stop(name: str, timeout: float = 15) -> int | None:
    """SIGTERM the forwarder and wait for it; returns its pid if one ran.
    A daemon's supervisor kills a worker that outlives its SIGTERM by
    supervisor.STOP_GRACE (10 s), within this timeout."""
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
