"""Idle connections held: many clients that each send the start of a request
and then wait, as a browser's or a connection pool's idle sockets do. The
forwarder carries each to the job (a channel of an ssh master, a gate
connection, a server connection), and its memory is what #17 bounds.

Held means answered: once the memory is read, every client ends its request
and the ones that get a 200 are counted.
"""

from __future__ import annotations

import re
import resource
import selectors
import socket
import time
import urllib.request

from . import procs

# Headers not ended by an empty line: the server waits for the rest.
PARTIAL = b"GET /health HTTP/1.1\r\nHost: bench\r\n"
# Kept alive once answered: a forwarder at its limit must not take in, as
# these close, the connections it left waiting in its backlog.
REST = b"\r\n"


def raise_nofile(wanted: int) -> int:
    """This process's soft limit up to `wanted`, within the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def open_idle(port: int, count: int) -> tuple[list[socket.socket], str]:
    """Up to `count` connections, each with PARTIAL sent; and why fewer, if so."""
    held: list[socket.socket] = []
    for number in range(1, count + 1):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(PARTIAL)
        except OSError as exc:
            return held, f"connection {number}: {exc}"
        held.append(sock)
    return held, ""


def metric(metrics_port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                    timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    match = re.search(rf"^{name}(?:{{[^}}]*}})? ([\d.e+]+)$", text, re.M)
    return float(match.group(1)) if match else None


def settle(pid: int, metrics_port: int, timeout: float) -> float:
    """Seconds until the forwarder's accepted count stops moving and its
    process is quiet (under 5% of a core over 2 s): set-ups are done."""
    start, accepted = time.monotonic(), -1.0
    while time.monotonic() - start < timeout:
        before = procs.ticks([pid])
        time.sleep(2)
        quiet = procs.cpu_percent(before, procs.ticks([pid]), 2) < 5
        now = metric(metrics_port, "slurm_persist_connections_open") or 0.0
        if quiet and now == accepted:
            break
        accepted = now
    return round(time.monotonic() - start, 1)


def answered(held: list[socket.socket], timeout: float, quiet: float = 5.0) -> int:
    """End every request; count the 200s that come back within timeout, or
    until none came for `quiet` seconds (the ones the forwarder could not
    accept wait in its backlog until others close: they were not held)."""
    selector = selectors.DefaultSelector()
    for sock in held:
        try:
            sock.setblocking(False)
            sock.send(REST)
            selector.register(sock, selectors.EVENT_READ, b"")
        except OSError:
            continue
    ok, deadline, last = 0, time.monotonic() + timeout, time.monotonic()
    while selector.get_map() and time.monotonic() < min(deadline, last + quiet):
        for key, _ in selector.select(timeout=1):
            last = time.monotonic()
            sock = key.fileobj
            try:
                chunk = sock.recv(4096)  # type: ignore[union-attr]
            except OSError:
                chunk = b""
            got = key.data + chunk
            if chunk and len(got) < 12:
                selector.modify(sock, selectors.EVENT_READ, got)
                continue
            ok += got.startswith(b"HTTP/1.1 200")
            selector.unregister(sock)
    selector.close()
    return ok


def hold(pid: int, port: int, metrics_port: int, count: int) -> dict:
    """Open `count` idle connections, let them settle, read the forwarder's
    RSS alone and with its ssh processes, then check each is carried."""
    limit = raise_nofile(count + 256)
    worker, ssh = procs.family(pid)
    before = {"rss_mb": procs.rss_mb([worker]), "with_ssh_mb": procs.rss_mb([worker, *ssh])}
    start = time.monotonic()
    held, short = open_idle(port, min(count, limit - 256))
    if not short and len(held) < count:
        short = f"the bench's nofile hard limit is {limit}"
    opened_s = round(time.monotonic() - start, 1)
    try:
        settle_s = settle(worker, metrics_port, timeout=120)
        worker, ssh = procs.family(pid)
        accepted = metric(metrics_port, "slurm_persist_connections_open")
        if not short and accepted is not None and accepted < len(held):
            short = (f"the forwarder accepted {accepted:,.0f}: its nofile limit is "
                     f"{procs.nofile(worker)}, 2 descriptors a connection and a reserve")
        row = {"wanted": count, "opened": len(held), "why_fewer": short, "nofile": limit,
               "open_s": opened_s, "settle_s": settle_s, "before": before, "accepted": accepted,
               "rss_mb": procs.rss_mb([worker]), "with_ssh_mb": procs.rss_mb([worker, *ssh]),
               "supervisor_rss_mb": procs.rss_mb([pid]) if worker != pid else 0.0,
               "ssh_processes": len(ssh)}
        start = time.monotonic()
        row["held"] = answered(held, timeout=180)
        row["answer_s"] = round(time.monotonic() - start, 1)
        return row
    finally:
        for sock in held:
            sock.close()
