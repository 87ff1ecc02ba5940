"""Fabric connections to the login nodes, one per node, each through its
own jumphost connection: opened with a time-out on each wait paramiko lets
us bound, host keys checked as :mod:`local.host_keys` says. Which node to
use is local.remote's choice.
"""

from __future__ import annotations

import logging
import threading

import paramiko
from fabric import Config, Connection

from .commands import Runner
from .config import Options
from .host_keys import check_host_keys

log = logging.getLogger("slurm_persist.remote")

CONNECT_TIMEOUT = 15


def _dead_transport(args: threading.ExceptHookArgs, default=threading.excepthook) -> None:
    """paramiko's transport thread raises EOFError when the connection died
    under it while a channel closes (seen: sshd killed mid-command, `status`
    printed a traceback). Site reports that command's failure itself."""
    if isinstance(args.thread, paramiko.Transport) and issubclass(args.exc_type,
                                                                   (EOFError, OSError)):
        log.debug("ssh=transport-ended error=%r", str(args.exc_value))
        return
    default(args)


threading.excepthook = _dead_transport


class Logins:
    """The open connections, by login node."""

    def __init__(self, options: Options):
        self.options = options
        self._open: dict[str, Connection] = {}

    def get(self, host: str) -> Connection:
        """host's connection, opened now if it is not open. One closed under
        us (Site.lost, the watchdog) is opened again here, with the bounds
        below: Fabric would reopen it by itself, without them."""
        known = self._open.get(host)
        if known is not None and not known.is_connected:
            self.drop(host)
        if host not in self._open:
            gateway = self._gateway()
            try:
                conn = self._make(host, self.options.username, gateway=gateway)
                conn.open()
            except BaseException:
                _close(gateway)  # else one jumphost connection leaks per dead node
                raise
            # paramiko waits an hour for a channel by default, and Fabric's
            # command timeout starts only once the channel is open: with our
            # user's sshd on login1 stopped (SIGSTOP, the host up) a command
            # waited past 195 s; bounded, it went to login2 after 15.4 s.
            conn.transport.channel_timeout = CONNECT_TIMEOUT
            self._open[host] = conn
            log.debug("login=%s state=connected", host)
        return self._open[host]

    def lost(self) -> list[str]:
        """The nodes whose connection died while idle."""
        return [host for host, conn in self._open.items() if not conn.is_connected]

    def abort(self, host: str) -> None:
        """Close host's connection, from any thread; it stays listed. A call
        waiting on it raises, and its own thread drops it."""
        conn = self._open.get(host)
        if conn is not None:
            _close(conn)
            _close(conn.gateway)  # Fabric's close leaves the jumphost connection open

    def drop(self, host: str) -> None:
        self.abort(host)
        self._open.pop(host, None)

    def close(self) -> None:
        for host in list(self._open):
            self.drop(host)

    def _gateway(self) -> Connection | None:
        if not self.options.jumphost:
            return None
        gateway = self._make(self.options.jumphost, self.options.jumphost_username)
        try:
            gateway.open()
        except BaseException:
            _close(gateway)  # its transport, when key exchange or authentication failed
            raise
        # The jumphost's connect to a login node that vanished waits for the
        # kernel's TCP time-out (2 min here); paramiko's default is an hour.
        gateway.transport.channel_timeout = CONNECT_TIMEOUT
        return gateway

    def _make(self, host: str, user: str | None, gateway=None) -> Connection:
        paths = {"runtime_ssh_path": self.options.ssh_config} if self.options.ssh_config else {}
        config = Config(overrides={"runners": {"remote": Runner}}, **paths)
        conn = Connection(host, user=user, gateway=gateway, config=config,
                          connect_timeout=CONNECT_TIMEOUT,
                          connect_kwargs={"allow_agent": True, "banner_timeout": CONNECT_TIMEOUT,
                                          "auth_timeout": CONNECT_TIMEOUT})
        check_host_keys(conn.client, conn.ssh_config)
        return conn


def _close(conn) -> None:
    """A Connection, or a gateway that may be None or a ProxyCommand string."""
    if isinstance(conn, Connection):
        try:
            conn.close()
            conn.client.close()  # also a transport that never became active
        except Exception:  # closing a broken transport may raise anything
            pass
