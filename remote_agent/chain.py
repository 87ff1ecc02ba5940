"""The chain's own state, shared by all its jobs: ``<service dir>/chain.json``.

It carries what must outlive one job: how many jobs in a row failed to
serve (the crash-loop guard), and whether the chain was stopped (by `down`,
or by the guard) and why. Jobs read it before they submit a successor or
release one, so a stopped chain stays stopped.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from . import layout

FORMAT = 1


@dataclass(frozen=True)
class ChainState:
    failed_jobs: int = 0
    stopped: bool = False
    reason: str = ""
    format: int = FORMAT


def after_failure(state: ChainState, job_id: str, limit: int) -> ChainState:
    """The state after one more job that never served: stopped (the
    crash-loop guard) once `limit` did so in a row, unless stopped already."""
    failed = state.failed_jobs + 1
    if failed >= limit and not state.stopped:
        return ChainState(failed, True, f"crash loop: {failed} jobs in a row never served "
                          f"(last job {job_id}); fix the service and run up again")
    return ChainState(failed, state.stopped, state.reason)


def load(service_dir: Path) -> ChainState:
    """A missing file is a fresh chain; a broken one is read as fresh too,
    but said so, because refusing to run would end a healthy chain."""
    path = layout.chain_file(service_dir)
    try:
        data = json.loads(path.read_text())
        return ChainState(failed_jobs=int(data["failed_jobs"]), stopped=bool(data["stopped"]),
                          reason=str(data["reason"]))
    except FileNotFoundError:
        return ChainState()
    except (ValueError, KeyError, TypeError) as exc:
        return ChainState(reason=f"chain.json unreadable ({exc}); started afresh")


def save(service_dir: Path, state: ChainState) -> None:
    path = layout.chain_file(service_dir)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=".chain-")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(state), handle)
        os.replace(tmp, path)
    except BaseException:  # a full home: leave no half-written temp file behind
        os.unlink(tmp)
        raise
