"""`deploy`: put the agent and the service's files on the cluster and
write the spec. Only files whose content changed are sent (sha256 against
the cluster's copy), so a second deploy of the same tree sends nothing.
Nothing on the cluster is deleted: a file removed locally stays there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import remote_agent
from remote_agent import layout
from remote_agent.spec import Spec

from . import reverse
from .cluster import Chain
from .config import check_script_dir

log = logging.getLogger("slurm_persist.deploy")

SKIP_DIRS = {"__pycache__", ".venv", "venv", ".git", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo"}


@dataclass(frozen=True)
class Report:
    sent: int
    unchanged: int


def local_files(root: Path) -> dict[str, Path]:
    """Relative path -> file, without caches and virtualenvs."""
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS for part in rel.parts) or path.suffix in SKIP_SUFFIXES:
            continue
        if path.is_file():
            files[rel.as_posix()] = path
    return files


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def deploy(chain: Chain, script_dir: Path) -> Report:
    spec = chain.spec()  # a spec the agent would refuse stops here, before any upload
    lay = chain.layout
    agent_root = Path(remote_agent.__file__).parent
    trees = [(agent_root, f"{lay.agent_dir}/remote_agent")]
    if chain.options.copy:
        check_script_dir(script_dir)
        trees.append((script_dir, lay.app_dir))
    site = chain.site
    dirs = {f"{lay.home}/.slurm-persist", lay.agent_dir, lay.service_dir,
            f"{lay.service_dir}/logs", f"{lay.service_dir}/endpoints"}
    sent = unchanged = 0
    app = ""
    for local_root, remote_root in trees:
        files = local_files(local_root)
        if remote_root == lay.app_dir:
            app = app_hash(files)
        dirs |= {_parent(remote_root, rel) for rel in files}
        site.run(["mkdir", "-p", *sorted(dirs)])
        site.run(["chmod", "700", *sorted(dirs)])
        remote = remote_hashes(chain, remote_root)
        for rel, path in files.items():
            if remote.get(rel) == sha256(path):
                unchanged += 1
                continue
            mode = 0o700 if path.stat().st_mode & 0o100 else 0o600
            site.put(path, f"{remote_root}/{rel}", mode)
            log.info("deploy=sent file=%s/%s", remote_root, rel)
            sent += 1
    hops = reverse.prepare(chain, spec) if spec.mode == "reverse" else []
    write_spec(chain, dataclasses.replace(spec, login_nodes=hops, app=app))
    return Report(sent, unchanged)


def app_hash(files: dict[str, Path]) -> str:
    """One hash of the service's files, names included: what `status` shows
    per job, so old code can be told from new after a deploy."""
    digest = hashlib.sha256()
    for rel, path in sorted(files.items()):
        digest.update(f"{rel}\0{sha256(path)}\n".encode())
    return digest.hexdigest()[:16]


def _parent(root: str, rel: str) -> str:
    parent = Path(rel).parent.as_posix()
    return root if parent == "." else f"{root}/{parent}"


def remote_hashes(chain: Chain, root: str) -> dict[str, str]:
    result = chain.site.run(["find", root, "-type", "f", "-exec", "sha256sum", "{}", "+"])
    hashes = {}
    for line in result.stdout.splitlines():
        digest, _, path = line.partition("  ")
        if path.startswith(root + "/"):
            hashes[path[len(root) + 1:]] = digest
    return hashes


def write_spec(chain: Chain, spec: Spec) -> None:
    chain.site.put_text(spec.dumps(), str(layout.spec_file(spec.service_dir)), 0o600)
