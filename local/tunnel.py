"""The data plane's SSH: one OpenSSH ControlMaster per login node.

The system ssh client carries the bytes (Fabric/paramiko forwarded 25x
slower here, see the design brief). It honours the user's ~/.ssh/config
(ProxyJump, IdentityFile, ControlMaster settings) or the ssh_config the
options name. Forwards go to Unix sockets in a 0700 runtime directory, so
no other local user can use them and no local port is picked and raced for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shlex
from collections.abc import Callable
from pathlib import Path

from .config import Options

log = logging.getLogger("slurm_persist.tunnel")

START_TIMEOUT = 30.0
# sshd sets TCP_NODELAY on a connection only once it opens a session there
# (ssh_packet_set_interactive, from session.c); a master started with -N
# alone never gets one, and an answer the server wrote in two pieces waited
# for a delayed ACK: keep-alive p50 41.5 ms, 1.1 ms after one `true` through
# the master (sandbox, GET /health). Any command will do; it runs once per
# master, in the background.
NODELAY_COMMAND = "true"
# After a failed probe, does the login node's sshd still answer us
# (Tunnel.answers)? A stdio forward to a closed port is refused at once and
# starts no session: no PAM, no shell reading a ~/.bashrc that loads
# modules from a network home (a command did, and a slow one would have
# sent a healthy node's next route to the fallback). A frozen sshd answers
# nothing. The bound only decides which login node goes first.
ANSWER_ADDRESS = "127.0.0.1:1"
ANSWER_TIMEOUT = 5.0


class TunnelError(RuntimeError):
    """The ssh master could not be started or a forward was refused."""


def ssh_base(options: Options, via: Path | None = None) -> list[str]:
    """ssh's argv up to the host; via: the control socket of our own master
    to the jumphost, to go through instead of ProxyJump's own connection."""
    argv = ["ssh"]
    if options.ssh_config:
        argv += ["-F", str(Path(options.ssh_config).expanduser())]
    if options.jumphost and via is not None:
        hop = [*ssh_base(to_jumphost(options)), "-S", str(via), "-W", "[%h]:%p", options.jumphost]
        argv += ["-o", "ProxyCommand=" + shlex.join(hop)]
    elif options.jumphost:
        jump = options.jumphost
        argv += ["-J", f"{options.jumphost_username}@{jump}" if options.jumphost_username else jump]
    if options.username:
        argv += ["-l", options.username]
    return argv + ["-o", "BatchMode=yes"]


# The names in a service's runtime directory, read back by leftovers.py
# after a forwarder was killed: c<index> a login node's master, c<index>j
# the jumphost master it goes through, c<index>-f<n>.sock its forwards.
CONTROL_PREFIX = "c"


def control_socket(directory: Path, index: int) -> Path:
    return directory / f"{CONTROL_PREFIX}{index}"


def jump_socket(control: Path) -> Path:
    return control.with_name(f"{control.name}j")


def forward_socket(control: Path, number: int) -> Path:
    return control.with_name(f"{control.name}-f{number}.sock")


def forward_sockets(directory: Path, control: str = f"{CONTROL_PREFIX}*") -> list[Path]:
    """The forward sockets of control (a name; all masters' by default)."""
    return list(directory.glob(f"{control}-f*.sock"))


def control_sockets(directory: Path) -> list[Path]:
    """The masters' control sockets in directory, login masters before the
    jumphost ones they go through (a jumphost master asked first would
    take its login master with it, which then does not answer)."""
    found = [c for c in directory.glob(f"{CONTROL_PREFIX}*")
             if "-" not in c.name and c.is_socket()]
    return sorted(found, key=lambda c: (c.name.endswith("j"), c.name))


def to_jumphost(options: Options) -> Options:
    """The options of a connection to the jumphost itself."""
    return dataclasses.replace(options, jumphost=None, username=options.jumphost_username)


class Tunnel:
    def __init__(self, options: Options, login: str, control: Path,
                 on_lost: Callable[[str], None] | None = None):
        self.options = options
        self.login = login
        self.control = control
        self._on_lost = on_lost
        self._proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Future | None = None
        self._forwards = 0
        self._session: asyncio.Future | None = None
        self._base: list[str] = []
        # With a jumphost, the master reaches the login node through a master
        # of its own to the jumphost, not ProxyJump's: the jumphost's sshd
        # sets TCP_NODELAY only for a connection with a session (see
        # NODELAY_COMMAND), and ProxyJump's never has one. Sandbox, ab -c1
        # on a new connection each: p50 45 ms -> 2 ms with both hops' sessions.
        self._jump: Tunnel | None = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def lost(self) -> bool:
        """ssh ended on a connection error (its 255), not by a signal here."""
        return self._proc is not None and self._proc.returncode == 255

    async def start(self) -> None:
        if self.options.jumphost:
            self._jump = Tunnel(to_jumphost(self.options), self.options.jumphost,
                                jump_socket(self.control))
        try:
            via = None
            if self._jump is not None:
                await self._jump.start()
                via = self._jump.control
            await self._start(ssh_base(self.options, via))
        except BaseException:
            await self.close()
            raise

    async def _start(self, base: list[str]) -> None:
        self._base = base
        if self.control.exists():
            self.control.unlink()
        alive = max(2, int(self.options.heartbeat_time))
        # A session of its own: Ctrl-C on a foreground `up` reached its whole
        # process group, and each master (with a jumphost, also the mux
        # client it proxies through, which sets its own SIGINT handler)
        # ended on it and logged `state=lost` while the forwarder closed.
        # The forwarder ends it (on SIGINT, SIGTERM, SIGHUP); a forwarder
        # killed outright leaves it to local.leftovers.
        self._proc = await asyncio.create_subprocess_exec(
            *base, "-M", "-S", str(self.control), "-N",
            "-o", "ControlPersist=no", "-o", f"ServerAliveInterval={alive}",
            "-o", "ServerAliveCountMax=3", "-o", "ExitOnForwardFailure=yes",
            "-o", f"ConnectTimeout={int(START_TIMEOUT)}", self.login,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        deadline = asyncio.get_event_loop().time() + START_TIMEOUT
        while asyncio.get_event_loop().time() < deadline:
            if self._proc.returncode is not None:
                assert self._proc.stderr is not None  # asked for with PIPE
                err = (await self._proc.stderr.read()).decode(errors="replace").strip()
                said = err.splitlines()[-1] if err else "no reason given"
                raise TunnelError(f"ssh to {self.login} failed: {said}")
            if self.control.exists() and await self._control("check") == 0:
                log.info("tunnel=%s state=up", self.login)
                self._session = asyncio.ensure_future(self._open_session())
                self._watch = asyncio.ensure_future(self._watch_master(self._proc))
                return
            await asyncio.sleep(0.2)
        raise TunnelError(f"ssh to {self.login} did not come up within {START_TIMEOUT:.0f} s")

    async def forward(self, remote: str) -> Path:
        """A local Unix socket that reaches remote ("host:port", or a Unix
        socket's path on the login node) from the login node."""
        self._forwards += 1
        path = forward_socket(self.control, self._forwards)
        if path.exists():
            path.unlink()
        if await self._control("forward", "-L", f"{path}:{remote}") != 0:
            raise TunnelError(f"{self.login} refused a forward to {remote}")
        return path

    async def cancel(self, path: Path, remote: str) -> None:
        if await self._control("cancel", "-L", f"{path}:{remote}") != 0:
            log.warning("tunnel=%s forward=%s state=cancel-failed", self.login, path.name)
        path.unlink(missing_ok=True)  # noqa: ASYNC240 - a local socket file, microseconds

    async def _open_session(self) -> None:
        """One command through the master, for sshd's TCP_NODELAY (above).
        A site that refuses sessions (a forwarding-only key) costs nothing
        but the 40 ms stalls."""
        code = await self._through(START_TIMEOUT, self.login, NODELAY_COMMAND)
        if code != 0:
            log.info("tunnel=%s session=refused code=%s nodelay=no", self.login, code)

    async def answers(self) -> bool:
        """Whether the login node's sshd still answers us on this master:
        the forward to ANSWER_ADDRESS refused (or, unlikely, made) within
        ANSWER_TIMEOUT. A frozen one answers nothing, while our master
        waits out its keep-alives."""
        return await self._through(ANSWER_TIMEOUT, "-W", ANSWER_ADDRESS, self.login) is not None

    async def _through(self, seconds: float, *request: str) -> int | None:
        """ssh with request through the master: its exit code, or None when
        it did not end within seconds."""
        proc = await asyncio.create_subprocess_exec(
            *self._base, "-S", str(self.control), *request,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        try:
            return await asyncio.wait_for(proc.wait(), seconds)
        except asyncio.TimeoutError:
            proc.kill()
            return None
        except asyncio.CancelledError:
            proc.kill()
            raise

    async def _watch_master(self, proc: asyncio.subprocess.Process) -> None:
        """Tell on_lost as soon as the master ends on a connection error:
        nobody else waits on it, and the heartbeat may be busy meanwhile."""
        await proc.wait()
        if self.lost:
            log.warning("tunnel=%s state=lost", self.login)
            if self._on_lost is not None:
                self._on_lost(self.login)

    async def _control(self, command: str, *extra: str) -> int:
        return await ask_master(self.options, self.control, self.login, command, *extra)

    async def close(self) -> None:
        for task in (self._session, self._watch):  # ended here: no loss to tell
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                proc.kill()
        for sock in forward_sockets(self.control.parent, self.control.name):
            sock.unlink()
        log.info("tunnel=%s state=closed", self.login)
        if self._jump is not None:
            await self._jump.close()


async def ask_master(options: Options, control: Path, login: str, command: str,
                      *extra: str) -> int:
    """ssh -O command to the master on control; its exit code (255: none answered)."""
    proc = await asyncio.create_subprocess_exec(
        *ssh_base(options), "-S", str(control), "-O", command, *extra, login,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        return await asyncio.wait_for(proc.wait(), 15)
    except asyncio.TimeoutError:
        proc.kill()
        return 255
