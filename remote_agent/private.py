"""The agent trusts only files and directories that are its user's alone.

A record or spec another user can write could point forwarders at their
server or make the agent run their command; a directory another user can
write lets them swap files in. Such paths are refused, never repaired: the
user must look at who changed them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable, List

from . import layout


def problems(paths: Iterable[Path], uid: int = -1) -> List[str]:
    """What is wrong with each existing path; an empty list means all private."""
    uid = os.getuid() if uid < 0 else uid
    found = []
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            found.append(f"{path} is a symbolic link")
        elif st.st_uid != uid:
            found.append(f"{path} belongs to uid {st.st_uid}, not {uid}")
        elif st.st_mode & 0o022:
            found.append(f"{path} can be written by others (mode {stat.S_IMODE(st.st_mode):o})")
    return found


def service_paths(service_dir: Path) -> List[Path]:
    return layout.private(service_dir)
