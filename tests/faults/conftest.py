"""Fixtures of the fault tests: a served service, and the fault table's rows."""

from __future__ import annotations

import json
import os

import pytest

from helpers import Load, Up


@pytest.fixture
def report(request):
    rows = []

    def add(fault: str, behaviour: str, recovery: float, load: Load | None) -> None:
        # The kinds of error go into the report too: a request lost once in
        # a while (1 of 113 at 01db6ac) is otherwise not told apart later.
        kinds = sorted({e.split(":")[0] for *_, e in (load.failures() if load else [])})
        row = {"fault": fault, "recovery": behaviour, "seconds": round(recovery, 1),
               "requests": len(load.results) if load else 0,
               "failed": len(load.failures()) if load else 0, "errors": kinds}
        rows.append(row)
        print(f"fault={fault!r} recovery_seconds={row['seconds']} requests={row['requests']} "
              f"failed={row['failed']} errors={','.join(kinds) or '-'}")

    yield add
    path = os.environ.get("SLURM_PERSIST_FAULT_REPORT")
    if path and rows:
        with open(path, "a") as out:
            for row in rows:
                out.write(json.dumps({**row, "test": request.node.name}) + "\n")


@pytest.fixture
def serve(start_up):
    """A fresh service, serving on its local port before the test goes on."""
    def start(name: str, *extra: str) -> Up:
        up = start_up(name, *extra)
        up.wait_serving()
        return up
    return start
