"""Small helpers shared by the integration tests."""

from __future__ import annotations

import time


def wait_for(what: str, predicate, timeout: float = 90.0, every: float = 1.0):
    """Poll predicate until it returns something truthy; fail with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
