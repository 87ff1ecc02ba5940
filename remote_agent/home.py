"""Whether jobs can write in the service dir of the shared home.

A job whose home is full dies before its agent runs (SLURM cannot write its
output) or cannot publish its record: a condition of the cluster, which
passes, not a broken service. The local side asks this to tell the two
apart, and to say so in `status` while it lasts.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Dict, Union

from . import layout

# Enough to need fresh blocks on any file system (a 0-byte file may still
# fit in a full one), small enough to cost nothing.
PROBE_BYTES = 64 * 1024


def check(service_dir: Path) -> Dict[str, Union[bool, int, str]]:
    target = layout.logs(service_dir)
    probe = target / f".write-check-{os.getpid()}"
    result: Dict[str, Union[bool, int, str]] = {"writable": True, "error": "",
                                                "path": str(target)}
    try:
        stats = os.statvfs(str(target))
        result["free_bytes"] = stats.f_bavail * stats.f_frsize
        fd = os.open(str(probe), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if os.write(fd, b"\0" * PROBE_BYTES) < PROBE_BYTES:  # a short write: full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        result["writable"] = False
        result["error"] = errno.errorcode.get(exc.errno or 0, "EIO")
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return result
