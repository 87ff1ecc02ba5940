"""The control plane: Fabric connections to the site's login nodes.

One connection per login node, through the jumphost, reused for every
command. The login nodes are tried in order (primary, then fallbacks), the
whole list up to ``retries`` more times with backoff; the first that answers
is used until it fails. A node that failed goes to the back of the list for
a while: connecting to a node that just went down costs CONNECT_TIMEOUT,
and that should be paid once, not on every command.

Host keys are checked as :mod:`local.host_keys` says; a changed key is
always refused.
"""

from __future__ import annotations

import io
import logging
import shlex
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut, UnexpectedExit

from .config import Options
from .host_keys import HostKeyUnknown, check_host_keys

log = logging.getLogger("slurm_persist.remote")


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

CONNECT_TIMEOUT = 15
# How long a login node that failed is tried only after the others.
SUSPECT_SECONDS = 300.0
COMMAND_TIMEOUT = 30
T = TypeVar("T")


class Unreachable(RuntimeError):
    """No login node answered; the message names each and why."""


class ClusterError(RuntimeError):
    """The cluster answered, but not with what was needed; the message says what."""


class HostKeyRefused(Unreachable):
    """A login node showed a host key known_hosts does not vouch for."""


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str
    host: str


class Site:
    """Runs commands on whichever login node answers."""

    def __init__(self, options: Options):
        self.options = options
        self._connections: dict[str, Connection] = {}
        self._failed: dict[str, float] = {}
        self.current: str | None = None

    def run(self, argv: Sequence[str], stdin: str | None = None,
            timeout: float = COMMAND_TIMEOUT,
            elsewhere: Callable[[Result], bool] | None = None) -> Result:
        """Run argv (quoted here, once) on a login node; fail over on SSH errors.
        A command that outlives timeout comes back as exit status 124: SLURM
        commands hang for minutes when the controller is gone, and a caller
        must see "no answer", not wait. When elsewhere(result) says the node
        itself failed the command (its munged is dead, say), each other node
        is tried once; if all fail so, the last answer is returned."""
        command = shlex.join(argv)

        def run_on(host: str) -> Result:
            return self._run_on(host, command, stdin, timeout)
        result = self._on_any(run_on)
        tried = {result.host}
        while elsewhere is not None and elsewhere(result):
            name = next((a for a in argv if a != "env" and "=" not in a), argv[0])
            log.warning("login=%s state=command-failed-here command=%s error=%r", result.host,
                        name, result.stderr.strip()[-200:])
            self.failed(result.host)  # later commands, too, try another node first
            rest = [host for host in self.order() if host not in tried]
            if not rest:
                break
            try:
                result = self._on_hosts(rest, run_on)
            except Unreachable:  # the others are down: this node's answer stands
                break
            tried.add(result.host)
        return result

    def run_at(self, host: str, argv: Sequence[str]) -> Result:
        """Run argv on this login node only: for what differs between them."""
        command = shlex.join(argv)
        return self._on_hosts([host], lambda h: self._run_on(h, command, None, COMMAND_TIMEOUT))

    def stream(self, argv: Sequence[str]) -> int:
        """Run argv with its output shown as it comes (logs --follow)."""
        command = shlex.join(argv)
        return self._on_any(lambda host: self._connection(host).run(
            command, hide=False, warn=True, pty=False, in_stream=False).exited)

    def put(self, local: Path, remote: str, mode: int) -> None:
        """Upload beside the target, then rename: a job never reads half a file."""
        def upload(host: str) -> None:
            sftp = self._connection(host).sftp()
            # Else a reply never comes from an sshd stopped mid-session (a
            # deploy waited past 120 s); socket.timeout moves to the next node.
            sftp.get_channel().settimeout(COMMAND_TIMEOUT)
            # Its own name: two `up`s may deploy the same file at once.
            partial = f"{remote}.partial-{uuid.uuid4().hex[:12]}"
            sftp.put(str(local), partial)
            sftp.chmod(partial, mode)
            sftp.posix_rename(partial, remote)
        self._on_any(upload)

    def put_text(self, text: str, remote: str, mode: int) -> None:
        with tempfile.NamedTemporaryFile("w") as handle:
            handle.write(text)
            handle.flush()
            self.put(Path(handle.name), remote, mode)

    def order(self) -> list[str]:
        """Login nodes, best first: the one in use, then the configured
        order, then those that failed lately (longest ago first)."""
        self._notice_broken()
        now = time.monotonic()
        suspect = {h: t for h, t in self._failed.items() if now - t < SUSPECT_SECONDS}
        fresh = [n for n in self.options.login_nodes if n not in suspect]
        if self.current in fresh:
            fresh.remove(self.current)
            fresh.insert(0, self.current)
        return fresh + sorted((n for n in self.options.login_nodes if n in suspect),
                              key=suspect.__getitem__)

    def failed(self, host: str) -> None:
        """host failed (here or, say the forwarder, for its tunnel)."""
        self._failed[host] = time.monotonic()
        if self.current == host:
            self.current = None

    def _notice_broken(self) -> None:
        """A connection that died while idle is a node that failed."""
        for host, conn in list(self._connections.items()):
            if not conn.is_connected:
                log.warning("login=%s state=connection-lost", host)
                self._drop(host)
                self.failed(host)

    def _on_any(self, action: Callable[[str], T]) -> T:
        """The first login node (best first) where action succeeds."""
        return self._on_hosts(self.order(), action)

    def _on_hosts(self, hosts: Sequence[str], action: Callable[[str], T]) -> T:
        """Each host in turn, the whole round again after a backoff: a dead
        first node must not hold up a live second one for every retry."""
        errors: dict[str, str] = {}
        hosts = list(hosts)
        for attempt in range(self.options.retries + 1):
            if attempt:
                time.sleep(min(2 ** (attempt - 1), 10))
            for host in list(hosts):
                try:
                    result = action(host)
                except (OSError, EOFError, paramiko.SSHException) as exc:
                    self._drop(host)
                    self.failed(host)
                    errors[host] = _describe(exc)
                    log.warning("login=%s state=unreachable attempt=%d error=%s", host,
                                attempt + 1, _describe(exc))
                    if isinstance(exc, (paramiko.BadHostKeyException, HostKeyUnknown)):
                        # Possibly someone in the middle: stop, do not route around it.
                        raise HostKeyRefused(f"{host}: {_describe(exc)}") from None
                    if isinstance(exc, paramiko.AuthenticationException):
                        hosts.remove(host)  # retrying cannot fix a key
                    continue
                self._failed.pop(host, None)
                return result
            if not hosts:
                break
        raise Unreachable("; ".join(f"{host}: {why}" for host, why in errors.items()))

    def close(self) -> None:
        for host in list(self._connections):
            self._drop(host)

    def _run_on(self, host: str, command: str, stdin: str | None, timeout: float) -> Result:
        conn = self._connection(host)
        try:
            out = conn.run(command, hide=True, warn=True, in_stream=_stream(stdin),
                           timeout=timeout)
        except UnexpectedExit as exc:  # pragma: no cover - warn=True avoids it
            out = exc.result
        except CommandTimedOut:
            self._drop(host)  # the channel may still carry the hung command
            return Result(124, "", f"{argv0(command)} did not answer within {timeout:.0f} s", host)
        if out.exited == -1:
            # No exit status: the connection died mid-command. Not retried
            # here: an sbatch cut off like this may still have gone through.
            self._drop(host)
            self.failed(host)
            return Result(-1, out.stdout, f"the connection to {host} closed before "
                          f"{argv0(command)} ended", host)
        return Result(out.exited, out.stdout, out.stderr, host)

    def _connection(self, host: str) -> Connection:
        if host not in self._connections:
            conn = self._make(host, self.options.username, gateway=self._gateway())
            try:
                conn.open()
            except BaseException:
                _close(conn.gateway)  # else one jumphost connection leaks per dead node
                raise
            # paramiko waits an hour for a channel by default, and Fabric's
            # command timeout starts only once the channel is open: with our
            # user's sshd on login1 stopped (SIGSTOP, the host up) a command
            # waited past 195 s; bounded, it went to login2 after 15.4 s.
            conn.transport.channel_timeout = CONNECT_TIMEOUT
            self._connections[host] = conn
            log.debug("login=%s state=connected", host)
        self.current = host
        return self._connections[host]

    def _gateway(self) -> Connection | None:
        if not self.options.jumphost:
            return None
        gateway = self._make(self.options.jumphost, self.options.jumphost_username)
        gateway.open()
        # The jumphost's connect to a login node that vanished waits for the
        # kernel's TCP time-out (2 min here); paramiko's default is an hour.
        gateway.transport.channel_timeout = CONNECT_TIMEOUT
        return gateway

    def _make(self, host: str, user: str | None, gateway=None) -> Connection:
        config = Config(runtime_ssh_path=self.options.ssh_config) if self.options.ssh_config \
            else Config()
        conn = Connection(host, user=user, gateway=gateway, config=config,
                          connect_timeout=CONNECT_TIMEOUT,
                          connect_kwargs={"allow_agent": True, "banner_timeout": CONNECT_TIMEOUT,
                                          "auth_timeout": CONNECT_TIMEOUT})
        check_host_keys(conn.client, conn.ssh_config)
        return conn

    def _drop(self, host: str) -> None:
        conn = self._connections.pop(host, None)
        if conn is not None:
            _close(conn)
            _close(conn.gateway)  # Fabric's close leaves the jumphost connection open
        if self.current == host:
            self.current = None


def _close(conn) -> None:
    """A Connection, or a gateway that may be None or a ProxyCommand string."""
    if isinstance(conn, Connection):
        try:
            conn.close()
        except Exception:  # closing a broken transport may raise anything
            pass


def _stream(stdin: str | None):
    return io.StringIO(stdin) if stdin is not None else False


def argv0(command: str) -> str:
    return command.split(" ", 1)[0]


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
