"""Where the local side keeps its files: the one place that names them.

    $XDG_STATE_HOME/slurm-persist/services/<name>/   (~/.local/state/...)
        forwarder.pid    the forwarder's (or its supervisor's) pid
        forwarder.log    the daemon's log
        forwarder.lock   held by the one forwarder of this service
        status.json      the forwarder's own account (status_file.py)
    $XDG_STATE_HOME/slurm-persist/sandbox/            the docker sandbox's keys
    $XDG_RUNTIME_DIR/slurm-persist-<uid>/<name>/      ssh control and forward sockets

Every level is the user's alone (0700).
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

from .tunnel import TunnelError

log = logging.getLogger("slurm_persist.paths")


def state_base() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")


def state_dir(name: str) -> Path:
    """Local runtime files of one service: pid, log, control sockets."""
    path = state_base()
    path.mkdir(parents=True, exist_ok=True)  # the user's own: its mode is theirs to choose
    # Pid, status and logs name the service and its cluster: each level ours
    # alone, also when an older version made it 0755.
    for part in ("slurm-persist", "services", name):
        path = path / part
        path.mkdir(mode=0o700, exist_ok=True)
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o700)
    return path


def pid_file(name: str) -> Path:
    return state_dir(name) / "forwarder.pid"


def log_file(name: str) -> Path:
    return state_dir(name) / "forwarder.log"


def lock_file(name: str) -> Path:
    return state_dir(name) / "forwarder.lock"


def status_file(name: str) -> Path:
    return state_dir(name) / "status.json"


def runtime_dir(name: str) -> Path:
    """A private directory for sockets; short, since socket paths are limited.
    In XDG_RUNTIME_DIR (the user's alone), one that someone else owns or can
    enter is refused, not repaired. Without it, in the temp dir every user
    shares, another user may have taken the name first: then a fresh one."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(xdg or tempfile.gettempdir()) / f"slurm-persist-{os.getuid()}"
    try:
        base.mkdir(mode=0o700)
    except FileExistsError:
        pass
    if not _private(base):
        if xdg:
            raise TunnelError(f"{base} is not a directory private to you; remove it and try again")
        taken = base
        base = Path(tempfile.mkdtemp(prefix=f"{taken.name}-"))
        log.warning("runtime=%s state=not-private using=%s", taken, base)
    path = base / name
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _private(folder: Path) -> bool:
    st = folder.lstat()  # lstat: a link to someone else's directory is not ours
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077
