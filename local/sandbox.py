"""The docker sandbox site: a real mini SLURM cluster behind a jumphost.

Used by the tests and as the cluster `up` targets when the user names none.
Only the jumphost publishes a port (on 127.0.0.1); everything else is reached
through it, exactly as on a real site. Keys and host keys are made per
sandbox and live in its state folder, never in the repository.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Names a checkout when the package was installed without one (a wheel).
CHECKOUT_ENV = "SLURM_PERSIST_CHECKOUT"
# Picks the sandbox's Debian release, and so its SLURM and Python; read here
# for the image tag and by docker/ensure-docker.sh for the base image.
RELEASE_ENV = "SANDBOX_RELEASE"
RELEASES = ("bookworm", "trixie")
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent
IMAGE = "slurm-persist/sandbox"
LOGIN_NODES = ("login1", "login2")
COMPUTE_NODES = ("node1", "node2")
SSH_HOSTS = ("jumphost", *LOGIN_NODES, *COMPUTE_NODES)
USERS = ("alice", "mallory")
JUMP_ALIAS = "sandbox-jump"
JUMP_USER = "service"


class SandboxError(RuntimeError):
    """The sandbox could not be built or started; the message says why."""


def docker_dir() -> Path:
    """docker/ of a slurm-persist checkout: the one $SLURM_PERSIST_CHECKOUT
    names, else beside this package (a checkout, an editable install), else
    the current directory's. A wheel leaves none in site-packages, where a
    docker/ is the Docker SDK's: only a folder with our files counts."""
    named = os.environ.get(CHECKOUT_ENV)
    roots = [Path(named).expanduser()] if named else [_PACKAGE_PARENT, Path.cwd()]
    for root in roots:
        if all((root / "docker" / name).is_file() for name in ("compose.yml", "ensure-docker.sh")):
            return (root / "docker").resolve()
    raise SandboxError(f"the sandbox needs a checkout of slurm-persist: no docker/compose.yml "
                       f"in {' or '.join(map(str, roots))}; run from a clone, or set "
                       f"{CHECKOUT_ENV} to one")


def release() -> str:
    name = os.environ.get(RELEASE_ENV, RELEASES[0])
    if name not in RELEASES:
        raise SandboxError(f"{RELEASE_ENV}={name!r}: the sandbox builds on {' or '.join(RELEASES)}")
    return name


def compose_file() -> Path:
    return docker_dir() / "compose.yml"


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "slurm-persist" / "sandbox"


@dataclass(frozen=True)
class Sandbox:
    project: str
    state_dir: Path

    @classmethod
    def default(cls) -> Sandbox:
        """The user's sandbox: one per state folder, so a second user or a
        test run with its own XDG_STATE_HOME never shares keys with another."""
        state = default_state_dir()
        digest = hashlib.sha256(str(state).encode()).hexdigest()[:8]
        return cls(project=f"slurm-persist-{digest}", state_dir=state)

    @property
    def keys_dir(self) -> Path:
        return self.state_dir / "keys"

    @property
    def ssh_config(self) -> Path:
        return self.state_dir / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    def identity(self, user: str = "alice") -> Path:
        return self.state_dir / f"id_{user}"

    # -- lifecycle -------------------------------------------------------

    def up(self, timeout: float = 180) -> None:
        """Build what is missing, start the site, wait for idle nodes."""
        started = time.monotonic()
        self.make_keys()
        self.build_image()
        log.info("sandbox=%s state=starting", self.project)
        self.compose("up", "-d", "--no-build")
        self.wait_ready(timeout)
        self.write_ssh_config()
        log.info("sandbox=%s state=ready seconds=%.1f jump_port=%d", self.project,
                 time.monotonic() - started, self.jump_port())

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans")
        log.info("sandbox=%s state=down", self.project)

    def is_current(self) -> bool:
        """Running, from the image the docker/ files in this tree make."""
        cid = self.compose("ps", "-q", "jumphost", check=False).strip()
        if not cid:
            return False
        want = _run(["docker", "image", "inspect", "-f", "{{.Id}}", self.image_tag()],
                    check=False, quiet=True)
        # Running too: `ps -q` lists exited containers, and after a reboot
        # (dockerd gone, its containers exited 255) `up` took a site that
        # refused every connection for a current one.
        have = _run(["docker", "inspect", "-f", "{{.Image}} {{.State.Running}}", cid],
                    check=False, quiet=True)
        if not want or not have:
            return False
        return have.split() == [want.strip(), "true"]

    def image_tag(self) -> str:
        """The same docker/ files make one image per release: both carry the
        release in their tag, or one would be taken for the other."""
        return f"{IMAGE}:{release()}-{_tree_hash(docker_dir())}"

    # -- pieces ----------------------------------------------------------

    def make_keys(self) -> None:
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        for user in USERS:
            key = self.identity(user)
            if not key.exists():
                _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                      f"{user}@slurm-persist-sandbox", "-f", str(key)])
            (self.keys_dir / f"{user}.pub").write_text(key.with_suffix(".pub").read_text())

    def build_image(self) -> None:
        """Build the site image unless one from the same docker/ files exists."""
        tag = self.image_tag()
        if _run(["docker", "image", "inspect", tag], check=False, quiet=True) is not None:
            return
        base = _out(["bash", str(docker_dir() / "ensure-docker.sh")]).strip().splitlines()[-1]
        log.info("sandbox=%s state=building image=%s base=%s", self.project, tag, base)
        _run(["docker", "build", "-q", "--build-arg", f"BASE_IMAGE={base}", "-t", tag,
              str(docker_dir())])

    def wait_ready(self, timeout: float) -> None:
        """Wait until every sshd listens and both compute nodes are idle."""
        deadline = time.monotonic() + timeout
        waiting = "the site to start"
        while time.monotonic() < deadline:
            waiting = self._starting()
            if not waiting:
                return
            time.sleep(1)
        raise SandboxError(f"sandbox not ready after {timeout:.0f} s: {waiting}")

    def _starting(self) -> str:
        """What is still starting, or "" once nothing is. Each host makes
        its host keys before sshd starts (RSA takes seconds on a busy
        machine), so a listening sshd also means keys to read."""
        for host in SSH_HOSTS:
            if not self.exec(host, "ss", "-Hltn", "sport = :22", check=False):
                return f"sshd on {host} is not listening"
        out, sinfo = self.nodes_out_of_service("login1")
        if out:
            return f"compute nodes not idle; sinfo said {sinfo.strip()!r}"
        return ""

    def nodes_out_of_service(self, host: str) -> tuple[list[str], str]:
        """The compute nodes that take no jobs now (all of them when sinfo
        on host fails), and what sinfo said."""
        sinfo = self.exec(host, "sinfo", "-h", "-N", "-o", "%N %t", check=False) or ""
        states = dict(line.split() for line in sinfo.splitlines() if len(line.split()) == 2)
        return [n for n in COMPUTE_NODES if states.get(n) not in ("idle", "mix", "alloc")], sinfo

    def jump_port(self) -> int:
        out = self.compose("port", "jumphost", "22").strip()
        if not out:
            raise SandboxError("the jumphost publishes no port; is the sandbox up?")
        return int(out.rsplit(":", 1)[1])

    def host_key(self, service: str) -> str:
        key = self.exec(service, "cat", "/etc/ssh/ssh_host_ed25519_key.pub") or ""
        return " ".join(key.split()[:2])

    def write_ssh_config(self) -> None:
        """An ssh_config that reaches every host through the jumphost only."""
        port = self.jump_port()
        known = [f"[127.0.0.1]:{port} {self.host_key('jumphost')}"]
        known += [f"{h} {self.host_key(h)}" for h in LOGIN_NODES + COMPUTE_NODES]
        self.known_hosts.write_text("\n".join(known) + "\n")
        self.ssh_config.write_text(
            f"# Written by slurm-persist for the docker sandbox {self.project}.\n"
            f"Host {JUMP_ALIAS}\n"
            f"  HostName 127.0.0.1\n  Port {port}\n  User {JUMP_USER}\n"
            f"Host {' '.join(LOGIN_NODES + COMPUTE_NODES)}\n"
            f"  User alice\n  ProxyJump {JUMP_ALIAS}\n"
            f"Host *\n"
            f"  IdentityFile {self.identity('alice')}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n  StrictHostKeyChecking yes\n"
            f"  BatchMode yes\n  ConnectTimeout 10\n"
        )

    # -- docker plumbing -------------------------------------------------

    def env(self) -> dict[str, str]:
        return {**os.environ, "SANDBOX_KEYS": str(self.keys_dir), "SANDBOX_IMAGE": self.image_tag()}

    def compose(self, *args: str, check: bool = True) -> str:
        cmd = ["docker-compose", "-p", self.project, "-f", str(compose_file()), *args]
        return _run(cmd, env=self.env(), check=check) or ""

    def container(self, service: str) -> str:
        """The container id of a service, for docker stop/start/network."""
        cid = self.compose("ps", "-q", service).strip()
        if not cid:
            raise SandboxError(f"no container for {service} in {self.project}")
        return cid

    def exec(self, service: str, *cmd: str, user: str = "root", check: bool = True) -> str | None:
        return _run(["docker", "exec", "-u", user, self.container(service), *cmd],
                    check=check, quiet=not check)


def _out(cmd: list[str]) -> str:
    """stdout of a command that must succeed (SandboxError otherwise)."""
    return _run(cmd) or ""


def _run(cmd: list[str], env: dict[str, str] | None = None, check: bool = True,
         quiet: bool = False) -> str | None:
    """Run a command; return stdout, or None when it failed and check is off."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode == 0:
        return proc.stdout
    if check:
        raise SandboxError(f"{' '.join(cmd[:3])}… failed ({proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    if not quiet:
        log.debug("command failed rc=%d cmd=%s", proc.returncode, cmd)
    return None


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
