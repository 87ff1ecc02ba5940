"""The local port's listening sockets, and who made them.

The forwarder binds 127.0.0.1:PORT (and ::1:PORT) itself, unless it is
handed sockets already listening: by its supervisor (`up --daemonize`),
which keeps them across forwarder restarts; by an orphaned worker to its
new supervisor, through the exec (orphaned.py); or by systemd's socket
activation (LISTEN_FDS). Either way the port never closes while a
forwarder is replaced: clients wait in the kernel's backlog, none is
refused.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from pathlib import Path

from remote_agent.listener import tcp_socket, unix_socket

log = logging.getLogger("slurm_persist.sockets")

# sd_listen_fds(3): passed sockets start at descriptor 3.
SD_LISTEN_FDS_START = 3


def bind(port: int, path: str | None = None) -> list[socket.socket]:
    """127.0.0.1:port, and ::1:port where the host has IPv6; or, with path,
    a Unix socket only its owner may use."""
    if path:
        return [private_unix_socket(path)]
    sockets = [tcp_socket("127.0.0.1", port)]
    try:
        sockets.append(tcp_socket("::1", port))
    except OSError as exc:
        log.info("listen=::1 port=%d state=skipped reason=%r", port, exc.strerror)
    return sockets


def private_unix_socket(path: str) -> socket.socket:
    """Mode 0600 from the start (the umask while binding), so no other user
    ever connects, not even in a race. A socket left by a forwarder that
    died is replaced; one that answers is another forwarder's: refused."""
    where = Path(path).expanduser()
    if where.is_socket():
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(where))
            raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE), str(where))
        except ConnectionRefusedError:
            where.unlink()  # nobody listens: a dead forwarder's
        finally:
            probe.close()
    mask = os.umask(0o177)
    try:
        sock = unix_socket(str(where))
    finally:
        os.umask(mask)
    return sock


def handed(fds: list[int]) -> list[socket.socket]:
    """The port's sockets an orphaned worker handed its new supervisor
    (orphaned.handing), open at these numbers through the exec."""
    sockets = []
    for fd in fds:
        os.set_inheritable(fd, False)  # not for the worker's ssh children
        sockets.append(socket.socket(fileno=fd))
    return sockets


def from_systemd(environ: dict | None = None) -> list[socket.socket]:
    """Sockets systemd (or systemd-socket-activate) passed to this very
    process; [] when none were. The variables are removed, as
    sd_listen_fds(3) does, so that children do not take them as theirs."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(env.get("LISTEN_FDS", "0") or 0)
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets
