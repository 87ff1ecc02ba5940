"""The user's server in this job: started behind a private upstream,
health-checked, restarted with backoff a bounded number of times.

Its output is piped through the agent into a Capped writer, so that a
server printing in a loop cannot fill the shared home (SERVER_CAP).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

from .joblog import Capped, copy_output
from .spec import Spec

HEALTH_EVERY = 15.0
HEALTH_FAILURES = 4


class Server:
    def __init__(self, spec: Spec, private: Path, ends_at: Optional[float], output: Capped,
                 say: Callable[..., None], stopping: Callable[[], bool]):
        self.spec, self.private, self.ends_at = spec, private, ends_at
        self.output, self.say, self.stopping = output, say, stopping
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.upstream: Optional[Upstream] = None
        self.restarts = 0
        self.failure: Optional[str] = None  # why it cannot serve, once known

    async def connect(self) -> socket.socket:
        """A connection for the gate to relay."""
        if self.upstream is None:  # the gate opens before the server starts
            raise ConnectionRefusedError("the server has not started")
        return await self.upstream.connect()

    async def start_healthy(self) -> bool:
        """Start it, restarting it on early exit, until healthy."""
        if self.spec.listen == "tcp":
            self.say("listen=tcp warning=%r", "other users' processes on this node can "
                     "reach the server's loopback port; use listen = unix if it can")
        while True:
            if await self._start():
                return True
            if self.failure or self.stopping() or self.restarts >= self.spec.max_restarts:
                return False
            self.restarts += 1
            delay = min(2 ** self.restarts, 60)
            self.say("state=restarting restarts=%d delay=%ds", self.restarts, delay)
            await asyncio.sleep(delay)

    async def _start(self) -> bool:
        self.upstream = Upstream.fresh(self.spec.listen, self.private, self.restarts)
        env = dict(os.environ, SLURM_PERSIST_SERVICE=self.spec.name, **self.upstream.env())
        if self.ends_at:
            env["SLURM_PERSIST_JOB_END"] = str(self.ends_at)
        self.say("state=starting command=%r %s", self.spec.command, self.upstream)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.spec.command, cwd=self.spec.app_dir, env=env, start_new_session=True,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        except OSError as exc:
            self.failure = f"cannot start {self.spec.command[0]}: {exc.strerror}"
            self.say("state=start-failed reason=%r", self.failure)
            return False
        assert self.proc.stdout is not None  # asked for with PIPE
        asyncio.ensure_future(copy_output(self.proc.stdout, self.output))
        deadline = time.monotonic() + self.spec.health_timeout
        while time.monotonic() < deadline and not self.stopping():
            if self.proc.returncode is not None:
                self.say("state=server-exited code=%d before-healthy", self.proc.returncode)
                return False
            if await http_ok(self.upstream.open, self.spec.health_path):
                return True
            await asyncio.sleep(0.5)
        if not self.stopping():
            self.failure = (f"server not healthy at {self.spec.health_path} on "
                            f"{self.upstream} within {self.spec.health_timeout:.0f} s")
            self.say("state=unhealthy reason=%r", self.failure)
        await self.stop()
        return False

    async def watch(self, publish: Callable[[str], None]) -> str:
        """Restart it when it exits or stops answering, while restarts last;
        returns why it could not go on."""
        failures = 0
        exited: Optional[asyncio.Future] = None
        while True:
            proc, upstream = self.proc, self.upstream
            assert proc is not None and upstream is not None  # watched once healthy
            if exited is None:  # one waiter per process: not one per look (5,800 a day)
                exited = asyncio.ensure_future(proc.wait())
            await asyncio.wait({exited}, timeout=HEALTH_EVERY)
            if exited.done():
                exited = None
                failures = HEALTH_FAILURES
                self.say("state=server-exited code=%s", proc.returncode)
            else:
                ok = await http_ok(upstream.open, self.spec.health_path)
                failures = 0 if ok else failures + 1
            if failures < HEALTH_FAILURES:
                continue
            if exited is not None:
                exited.cancel()
                exited = None
            await self.stop()
            if self.restarts >= self.spec.max_restarts:
                return f"server failed after {self.restarts} restarts"
            self.restarts += 1
            publish("starting")
            if not await self.start_healthy():
                return self.failure or f"server failed after {self.restarts} restarts"
            publish("serving")
            self.say("state=serving restarts=%d %s", self.restarts, self.upstream)
            failures = 0

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                await asyncio.wait_for(proc.wait(), wait)
                return
            except asyncio.TimeoutError:
                continue


class Upstream:
    """Where this job's server listens. By default a Unix socket in a 0700
    directory of this job: on a shared node, 127.0.0.1 is open to every
    user's processes, a private socket only to ours. listen = "tcp" (for
    servers that cannot use a socket) takes a loopback port instead."""

    def __init__(self, socket_path: Optional[Path] = None, port: int = 0):
        self.socket_path, self.port = socket_path, port

    @classmethod
    def fresh(cls, listen: str, private: Path, attempt: int) -> Upstream:
        if listen == "unix":
            return cls(socket_path=private / f"server-{attempt}.sock")
        return cls(port=_free_port())

    def env(self) -> Dict[str, str]:
        if self.socket_path:
            return {"SLURM_PERSIST_SOCKET": str(self.socket_path)}
        return {"HOST": "127.0.0.1", "PORT": str(self.port)}

    def open(self):
        if self.socket_path:
            return asyncio.open_unix_connection(str(self.socket_path))
        return asyncio.open_connection("127.0.0.1", self.port)

    async def connect(self) -> socket.socket:
        """A connected non-blocking socket, for the gate's Splice."""
        if self.socket_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Union[str, Tuple[str, int]] = str(self.socket_path)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            address = ("127.0.0.1", self.port)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, address)
        except BaseException:  # refused, or cancelled by a drain: no socket left behind
            sock.close()
            raise
        return sock

    def __str__(self) -> str:
        if self.socket_path:
            return f"server_socket={self.socket_path}"
        return f"server_port={self.port}"


async def http_ok(opener, path: str, timeout: float = 5.0) -> bool:
    """True when GET path answers 2xx. Plain asyncio: the agent has no aiohttp."""
    try:
        reader, writer = await asyncio.wait_for(opener(), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        status = await asyncio.wait_for(reader.readline(), timeout)
        parts = status.split()
        return len(parts) >= 2 and parts[1][:1] == b"2"
    except (OSError, asyncio.TimeoutError, ValueError):
        return False
    finally:
        writer.close()


def _free_port() -> int:
    """A loopback port for the server. The server binds it itself, so a
    collision is possible and is handled as an early exit + restart."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
