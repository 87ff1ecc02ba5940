"""Shared fixtures: the docker sandbox cluster (pytest-docker), SSH as a
cluster user through the jumphost, and the faults the tests inject."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import Up, site_options
from local.cluster import Chain
from local.deploy import deploy
from local.remote import Site
from local.sandbox import Sandbox, compose_file


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory) -> Sandbox:
    """Keys and image for this run's cluster; the containers come later."""
    box = Sandbox(project=f"sptest{os.getpid()}", state_dir=tmp_path_factory.mktemp("sandbox"))
    box.make_keys()
    box.build_image()
    # pytest-docker runs docker-compose with this process's environment.
    os.environ.update({k: v for k, v in box.env().items() if k.startswith("SANDBOX_")})
    return box


@pytest.fixture(scope="session")
def docker_compose_command() -> str:
    return "docker-compose"  # Debian's Compose v1 talks to the 20.10 engine here


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(compose_file())


@pytest.fixture(scope="session")
def docker_compose_project_name(sandbox: Sandbox) -> str:
    return sandbox.project


@pytest.fixture(scope="session")
def docker_setup(sandbox: Sandbox) -> list[str]:
    return ["up -d --no-build"]


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down -v --remove-orphans"]


@pytest.fixture(scope="session")
def cluster(sandbox: Sandbox, docker_services) -> Sandbox:
    """A running sandbox site with both compute nodes idle."""
    sandbox.wait_ready(timeout=180)
    sandbox.write_ssh_config()
    return sandbox


@dataclass
class Shell:
    """Runs commands as a cluster user, always through the jumphost."""

    cluster: Sandbox
    user: str = "alice"

    def argv(self, host: str, command: str) -> list[str]:
        return ["ssh", "-F", str(self.cluster.ssh_config),
                "-i", str(self.cluster.identity(self.user)),
                "-l", self.user, host, command]

    def run(self, command: str, host: str = "login1", check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(host, command), capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.user}@{host}: {command!r} exited {proc.returncode}: "
                                 f"{proc.stderr.strip()}")
        return proc

    def out(self, command: str, host: str = "login1") -> str:
        return self.run(command, host).stdout.strip()


@pytest.fixture(scope="session")
def alice(cluster: Sandbox) -> Shell:
    return Shell(cluster, "alice")


@pytest.fixture(scope="session")
def mallory(cluster: Sandbox) -> Shell:
    return Shell(cluster, "mallory")


@pytest.fixture
def faults(cluster: Sandbox):
    """Stop containers, cut them off the network, kill processes in them;
    whatever a test broke is mended when it ends."""
    injector = Faults(cluster)
    yield injector
    injector.restore()


class Faults:
    def __init__(self, cluster: Sandbox):
        self.cluster = cluster
        self._undo: list[list[str]] = []

    def stop(self, service: str) -> None:
        cid = self.cluster.container(service)
        subprocess.run(["docker", "stop", "-t", "2", cid], check=True, capture_output=True)
        self._undo.append(["docker", "start", cid])

    def pause(self, service: str) -> None:
        """Freeze a container: it keeps its name and address but answers
        nothing, like a hung node or a network black hole."""
        cid = self.cluster.container(service)
        subprocess.run(["docker", "pause", cid], check=True, capture_output=True)
        self._undo.append(["docker", "unpause", cid])

    def start(self, service: str) -> None:
        subprocess.run(["docker", "start", self.cluster.container(service)], check=True,
                       capture_output=True)

    def disconnect(self, service: str, network: str = "cluster") -> None:
        net = f"{self.cluster.project}_{network}"
        cid = self.cluster.container(service)
        subprocess.run(["docker", "network", "disconnect", net, cid], check=True,
                       capture_output=True)
        self._undo.append(["docker", "network", "connect", "--alias", service, net, cid])

    def freeze(self, service: str, pattern: str) -> None:
        """SIGSTOP the processes matching pattern (pkill -f, an extended
        regex): they keep their connections open and answer nothing, as
        when stuck on a dead filesystem."""
        self.kill(service, pattern, "STOP")
        self._undo.append(["docker", "exec", self.cluster.container(service),
                           "pkill", "-CONT", "-f", pattern])

    def kill(self, service: str, pattern: str, signal: str = "KILL") -> None:
        self.cluster.exec(service, "pkill", f"-{signal}", "-f", pattern, check=False)

    def kill_munged(self, service: str) -> None:
        """SLURM commands on that host then fail with "Munge encode failed"."""
        self.cluster.exec(service, "pkill", "-x", "munged", check=False)
        self._undo.append(["docker", "exec", self.cluster.container(service),
                           "runuser", "-u", "munge", "--", "munged", "--force"])

    def restore(self) -> None:
        for cmd in reversed(self._undo):
            subprocess.run(cmd, capture_output=True)
        self._undo.clear()
        self._nodes_in_service()

    def _nodes_in_service(self) -> None:
        """A node SLURM marked DOWN stays out of the next test's placement:
        the replicas test then found both replicas on the one node left (CI,
        after the slurmd-stopped test). ReturnToService=2 brings a node back
        when its slurmd registers; one that has not within 30 s (a frozen
        slurmd that was only continued) is resumed as an admin would."""
        deadline, resumed = time.monotonic() + 120, False
        while True:
            out, shown = self.cluster.nodes_out_of_service("slurmctld")
            if not out:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"nodes not back in service after a fault: {shown!r}")
            if not resumed and time.monotonic() > deadline - 90:
                self.cluster.exec("slurmctld", "scontrol", "update",
                                  f"nodename={','.join(out)}", "state=resume", check=False)
                resumed = True
            time.sleep(2)


@pytest.fixture(scope="session", autouse=True)
def private_state(tmp_path_factory):
    """The tool's local state (pid files, sockets) of this run, not the user's."""
    base = tmp_path_factory.mktemp("state")
    runtime = Path(tempfile.mkdtemp(prefix="spr-"))
    os.environ["XDG_STATE_HOME"] = str(base)
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    yield
    shutil.rmtree(runtime, ignore_errors=True)


HPC = Path(__file__).resolve().parent.parent / "hpc"


@pytest.fixture
def make_service(cluster: Sandbox, tmp_path):
    """Deploy a copy of hpc/ (optionally with another `run`) as a fresh
    service; every chain made here is cancelled when the test ends."""
    chains: list[Chain] = []

    def make(name: str, run: str | None = None, **changes) -> Chain:
        app = tmp_path / name
        shutil.copytree(HPC, app)
        if run is not None:
            (app / "run").rename(app / "run-example")
            (app / "run").write_text(run)
            (app / "run").chmod(0o755)
        options = site_options(cluster, name=name, app_dir=str(app), **changes)
        chain = Chain(Site(options), options)
        deploy(chain, app)
        chains.append(chain)
        return chain

    yield make
    for chain in chains:
        chain.cancel_all()
        chain.site.close()


@pytest.fixture
def start_up(cluster, tmp_path):
    """`slurm-persist up` in the foreground, per test; stopped and down at the end."""
    started: list[Up] = []

    def start(name: str, *extra: str) -> Up:
        up = Up(cluster, name, tmp_path, *extra)
        started.append(up)
        return up

    yield start
    for up in started:
        up.stop()
