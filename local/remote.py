"""The control plane: which login node runs each command.

One connection per login node (:mod:`local.logins`), reused for every
command. The login nodes are tried in order (primary, then fallbacks), the
whole list up to ``retries`` more times with backoff; the first that answers
is used until it fails. A node that failed goes to the back of the list for
a while: connecting to a node that just went down costs CONNECT_TIMEOUT,
and that should be paid once, not on every command.

Host keys are checked as :mod:`local.host_keys` says; a changed key is
always refused.
"""

from __future__ import annotations

import logging
import shlex
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import paramiko
from fabric import Connection
from invoke.exceptions import CommandTimedOut

from .commands import Lost, SentThenLost, execute, send_file
from .config import Options
from .host_keys import HostKeyUnknown
from .logins import CONNECT_TIMEOUT, Logins
from .watchdog import Watchdog

log = logging.getLogger("slurm_persist.remote")

# How long a login node that failed is tried only after the others.
SUSPECT_SECONDS = 300.0
COMMAND_TIMEOUT = 30
# A command that did not answer in time, as timeout(1) says it.
TIMED_OUT = 124
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

    @property
    def unanswered(self) -> bool:
        """Timed out, or ended without a status: it may have done its work."""
        return self.returncode in (TIMED_OUT, -1)


class Site:
    """Runs commands on whichever login node answers."""

    def __init__(self, options: Options):
        self.options = options
        self._logins = Logins(options)
        self._failed: dict[str, float] = {}
        self.current: str | None = None
        self.watchdog = Watchdog()  # started where a hang must end the process (service.forward)

    def run(self, argv: Sequence[str], stdin: str | None = None,
            timeout: float = COMMAND_TIMEOUT,
            elsewhere: Callable[[Result], bool] | None = None, once: bool = False) -> Result:
        """Run argv (quoted here, once) on a login node; fail over on SSH errors.
        A command that outlives timeout comes back as exit status 124: SLURM
        commands hang for minutes when the controller is gone, and a caller
        must see "no answer", not wait. When elsewhere(result) says the node
        itself failed the command (its munged is dead, say), each other node
        is tried once; if all fail so, the last answer is returned. A
        command whose connection fails after its exec request went out is
        run again on the next node, unless once: one that must not run twice
        (sbatch) comes back cut off (-1)."""
        command = shlex.join(argv)

        def run_on(host: str) -> Result:
            return self._run_on(host, command, stdin, timeout, once)
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

        def follow(host: str) -> int:
            try:
                return self._connection(host).run(command, hide=False, warn=True, pty=False,
                                                  in_stream=False).exited
            except SentThenLost as exc:  # it only shows: safe to show again from the next node
                raise ConnectionError(str(exc)) from exc
        return self._on_any(follow)

    def put(self, local: Path, remote: str, mode: int) -> None:
        """Upload beside the target, then rename: a job never reads half a file."""
        def upload(host: str) -> None:
            # Opening SFTP waits without a time-out for the subsystem's
            # answer and its version: the watchdog's bound, as a command's.
            with self._watched(f"sftp to {host}", host, COMMAND_TIMEOUT):
                sftp = self._connection(host).sftp()
            send_file(sftp, local, remote, mode, COMMAND_TIMEOUT)
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
        failed = dict(self._failed)  # one step: failed() may run on another thread meanwhile
        suspect = {h: t for h, t in failed.items() if now - t < SUSPECT_SECONDS}
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

    def lost(self, host: str) -> None:
        """Our ssh master to host ended on a connection error, or host's
        sshd does not answer on it: this connection there is likely stuck
        the same way. Closed (from any thread), a command waiting on it
        raises and goes to the next node."""
        self.failed(host)
        self._logins.abort(host)

    def _notice_broken(self) -> None:
        """A connection that died while idle is a node that failed."""
        for host in self._logins.lost():
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
                started = time.monotonic()
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
                if self._failed.get(host, started) < started:
                    # An answer clears an older failure, not one told meanwhile
                    # (a cut-off command, Site.lost from the forwarder).
                    self._failed.pop(host, None)
                return result
            if not hosts:
                break
        raise Unreachable("; ".join(f"{host}: {why}" for host, why in errors.items()))

    def close(self) -> None:
        self._logins.close()
        self.current = None

    def _run_on(self, host: str, command: str, stdin: str | None, timeout: float,
                once: bool = False) -> Result:
        with self._watched(f"{command[:100]} on {host}", host, timeout):
            return self._command_on(host, command, stdin, timeout, once)

    def _watched(self, what: str, host: str, timeout: float):
        # The watchdog's bound: a healthy path's worst case twice over, each
        # wait of a connection (the jumphost's TCP, banner and key exchange,
        # authentication, the hop's channel, the node's banner and
        # authentication, the command's channel: 7 x CONNECT_TIMEOUT with one
        # key) and the command. Past it, the node's connection is closed: the
        # wait raises, and the command goes to the next node (or comes back
        # cut off, once its exec request went out, when it must run once).
        return self.watchdog.watch(what, 14 * CONNECT_TIMEOUT + 2 * timeout,
                                   unstick=lambda: self._logins.abort(host))

    def _command_on(self, host: str, command: str, stdin: str | None, timeout: float,
                    once: bool) -> Result:
        try:
            out = execute(self._connection(host), command, stdin, timeout)
        except CommandTimedOut:
            self._drop(host)  # the channel may still carry the hung command
            return Result(TIMED_OUT, "", f"{argv0(command)} did not answer within {timeout:.0f} s",
                          host)
        except Lost as lost:
            said = f"the connection to {host} closed before {argv0(command)} ended"
            if not once:  # it may have run there: harmless for this one, the next node
                raise ConnectionError(said) from None
            log.warning("login=%s state=cut-off command=%s", host, argv0(command))
            self._drop(host)
            self.failed(host)
            return Result(-1, lost.stdout, said, host)
        if out.exited == -1:
            return Result(-1, out.stdout, f"{argv0(command)} on {host} ended without an exit "
                          "status (a signal?)", host)
        return Result(out.exited, out.stdout, out.stderr, host)

    def _connection(self, host: str) -> Connection:
        conn = self._logins.get(host)
        self.current = host
        return conn

    def _drop(self, host: str) -> None:
        self._logins.drop(host)
        if self.current == host:
            self.current = None


def argv0(command: str) -> str:
    return command.split(" ", 1)[0]


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
