"""Small helpers shared by the integration tests."""

from __future__ import annotations

import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.client import Load  # noqa: F401  (shared with the benchmark)
from local.config import Options
from local.sandbox import JUMP_ALIAS, JUMP_USER, Sandbox
from remote_agent.gate import preamble


def wait_for(what: str, predicate, timeout: float = 90.0, every: float = 1.0):
    """Poll predicate until it returns something truthy; fail with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def serving(chain, job_id=None):
    """A serving record SLURM confirms (of any slot), optionally of one job."""
    records = chain.serving(chain.jobs(), chain.snapshot()).values()
    return next((r for r in records if job_id is None or r.job_id == job_id), None)


def gate_get(alice, record, path="/health", secret=None) -> str:
    """GET through the job's gate from a login node, as a cluster user would:
    to node:port (direct mode) or to the job's socket on the login node
    that holds it (reverse mode)."""
    hello = preamble(record.secret if secret is None else secret).decode()
    if record.socket:
        login = record.login_node
        connect = ("s=socket.socket(socket.AF_UNIX)\ns.settimeout(5)\n"
                   f"s.connect({record.socket!r})\n")
    else:
        login = "login1"
        connect = f"s=socket.create_connection(({record.host!r},{record.port}),5)\n"
    script = (
        "import socket,sys\n"
        + connect +
        f"s.sendall({hello!r}.encode()+b'GET {path} HTTP/1.0\\r\\n\\r\\n')\n"
        "data=b''\n"
        "while True:\n"
        "    chunk=s.recv(65536)\n"
        "    if not chunk: break\n"
        "    data+=chunk\n"
        "sys.stdout.write(data.decode(errors='replace'))\n")
    return alice.run(f"python3 -c {shlex.quote(script)}", host=login).stdout


BIN = str(Path(sys.executable).parent / "slurm-persist")
HPC = str(Path(__file__).resolve().parents[1] / "hpc")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def site_args(cluster, name: str, *extra: str) -> list[str]:
    return ["--name", name, "--hpc-system-url", "login1", "--fallback-system-url", "login2",
            "--jumphost-url", JUMP_ALIAS, "--jumphost-username", JUMP_USER, "--username", "alice",
            "--ssh-config", str(cluster.ssh_config), "--retries", "1", *extra]


def up_args(cluster, name: str, port: int, *extra: str) -> list[str]:
    """A heartbeat of 2 s unless extra names one: faults show sooner."""
    own_app = any(a in extra for a in ("--local-hpc-script-dir", "--app-dir"))
    heartbeat = [] if "--heartbeat-time" in extra else ["--heartbeat-time", "2"]
    return ["up", *site_args(cluster, name), "--local-port", str(port),
            *([] if own_app else ["--local-hpc-script-dir", HPC]), *heartbeat,
            "--delay-between-server-and-port", "1", *extra]


def cli(*args: str, cwd=None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([BIN, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def get(port: int, path: str = "/", data: bytes | None = None, timeout: float = 10):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


def answers(port: int):
    try:
        return get(port, "/health", timeout=5)[0] == 200
    except OSError:
        return False


class Up:
    """`slurm-persist up` in the foreground, in a child process."""

    def __init__(self, cluster, name: str, tmp_path: Path, *extra: str):
        self.port = free_port()
        self.cluster, self.name = cluster, name
        self.log = tmp_path / f"{name}-up.log"
        self.proc = subprocess.Popen([BIN, *up_args(cluster, name, self.port, *extra)],
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def wait_serving(self, timeout: float = 120) -> None:
        wait_for(f"{self.name} on 127.0.0.1:{self.port}", lambda: answers(self.port) or
                 self._exited(), timeout=timeout)

    def _exited(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"up exited {self.proc.returncode}: {self.log.read_text()}")
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=30)
        cli("down", *site_args(self.cluster, self.name))


def ssh_masters(runtime: Path) -> dict[int, tuple[int, str]]:
    """The running ssh masters whose control socket is in runtime:
    pid -> (parent pid, control socket's name)."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().decode().split("\0")
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
        if Path(argv[0]).name == "ssh" and "-M" in argv:
            control = Path(argv[argv.index("-S") + 1])
            if control.parent == runtime:
                found[int(proc.name)] = (parent, control.name)
    return found


# A cluster user's sshd processes, for pkill -f: "sshd: alice@notty" up to
# OpenSSH 9.7 (bookworm), "sshd-session: alice@notty" from 9.8 (trixie).
def user_sshd(user: str) -> str:
    return f"sshd(-session)?: {user}"


def site_options(cluster: Sandbox, **changes) -> Options:
    """Options that reach the test cluster the way a user's would."""
    values = dict(login_node="login1", fallback_login_nodes=["login2"],
                  jumphost=JUMP_ALIAS, jumphost_username=JUMP_USER, username="alice",
                  ssh_config=str(cluster.ssh_config), retries=1, heartbeat_time=2.0,
                  look_interval=1.0)
    values.update(changes)
    return Options(**values)


def event_sink(path: Path) -> str:
    """An on_event command that appends each event (one JSON line) to path."""
    script = f"import sys; open({str(path)!r}, 'a').write(sys.stdin.read())"
    return shlex.join([sys.executable, "-c", script])


def events(path: Path) -> list[dict]:
    import json
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
