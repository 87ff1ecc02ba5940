"""One `up` at a time per service: a lock in the service dir.

Seen on the sandbox: two `up` for one service in the same second each found
no chain and each started one (5 of 5 tries). "Find the chain, else submit
one" is now done under this lock, from any laptop: a directory made with
mkdir, which is atomic on local and NFS file systems alike. It names its
holder; one older than STALE seconds (a holder that died) is broken.
Its holder asking again has it (its first answer was cut off, and `up`
asked on the next login node). A request left in a frozen login node's
sshd may still take it after `up` released it: held then until STALE.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from . import layout

LOCK = layout.LOCK
# Finding a chain and submitting one takes a few ssh round trips: seconds.
STALE = 120.0
# How long `up` waits for another `up` of the same service to find or start the chain.
WAIT = 60.0


def acquire(service_dir: Path, owner: str, wait: float) -> bool:
    path = Path(service_dir) / LOCK
    deadline = time.monotonic() + wait
    while True:
        try:
            os.mkdir(str(path), 0o700)
        except FileExistsError:
            if _holder(path) == owner:  # asked again: its first answer was cut off
                return True
            _break_if_stale(path)
        else:
            (path / "owner").write_text(owner)
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def _break_if_stale(path: Path) -> None:
    """Move a dead holder's lock aside under its holder's name. Two that
    find it stale at once both try the same move: the second fails (the
    name is taken by a non-empty directory) instead of moving aside the
    lock the first has just taken. Moved-aside locks are removed once
    their move (ctime) is STALE old, long after any such race."""
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return
    holder = _holder(path)
    if age <= STALE:
        return
    try:
        os.rename(str(path), str(path.with_name(f"{LOCK}.stale-{_plain(holder)}")))
    except OSError:
        return
    for aside in path.parent.glob(f"{LOCK}.stale-*"):
        try:
            if time.time() - aside.stat().st_ctime > STALE:
                shutil.rmtree(str(aside), ignore_errors=True)
        except OSError:
            pass


def _holder(path: Path) -> str:
    try:
        return (path / "owner").read_text()
    except OSError:  # died (or the home was full) between mkdir and writing it
        return "unknown"


def _plain(owner: str) -> str:
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in owner)[:100]


def release(service_dir: Path, owner: str) -> bool:
    """Only the holder's own lock is removed (a broken one may be another's now)."""
    path = Path(service_dir) / LOCK
    if _holder(path) != owner:
        return False
    shutil.rmtree(str(path), ignore_errors=True)
    return True
