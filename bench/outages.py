"""Outages under a steady client load (bench/client.py's Load on the local
port): a job cancelled, and a time-limit rollover with overlap."""

from __future__ import annotations

import time
from collections.abc import Callable

from .client import Load


def recovery(port: int, on_login: Callable[[str], str]) -> dict:
    """scancel the serving job; seconds until its successor answers."""
    with Load(port) as load:
        while not load.jobs():
            time.sleep(0.2)
        old = load.jobs()[-1]
        t0 = time.time()
        on_login(f"scancel {old}")
        deadline = time.monotonic() + 120
        while len(load.jobs()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
    new = next((j for j in load.jobs() if j != old), None)
    return {"seconds": round(load.first_served_by(new, t0), 2) if new else None,
            "requests": len(load.results), "failed": len(load.failures())}


def rollover(port: int, on_login: Callable[[str], str]) -> dict:
    """Requests that failed while the serving job reached its time limit."""
    with Load(port) as load:
        while not load.jobs():
            time.sleep(0.2)
        old = load.jobs()[-1]
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and on_login(
                f"squeue -h -j {old} -o %T || true").strip():
            time.sleep(2)
        time.sleep(2)
    return {"requests": len(load.results), "failed": len(load.failures()),
            "jobs": load.jobs()}
