"""slurm-persist and the hand-made ssh -L in turn, for several rounds on one
sandbox, and where the CPU goes.

Two runs of the same code on the 2-core build machine moved the load-tool
rows by 10-30%, more than most of #17's margins. Measured in turn, a
drift of the machine falls on both paths alike, so each round gives a
ratio, and a goal is judged on the median round's (table.py shows the
range beside it).

During each ab and wrk run every process's CPU is read from /proc and
summed by role, per request: the relays (the forwarder, the gate) against
what both paths have (OpenSSH, the server, Docker's port publishing and
resolver, the load tool itself). On shared cores that sum, not any one
process, is what limits a path's rate.
"""

from __future__ import annotations

import os
import resource
import statistics
from pathlib import Path

from . import client, tools
from .pinned import CannotPin, Pinned, cannot_pin
from .procs import ROLES, command, pids, role, stat_ticks
from .table import BASE, OURS, PINNED

TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")

Snapshot = dict[int, tuple[int, str]]


def snapshot() -> Snapshot:
    """Every process's CPU ticks so far (user + system) and command line."""
    seen: Snapshot = {}
    for pid in pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        seen[pid] = (stat_ticks(stat), command(pid))
    return seen


def children_seconds() -> float:
    """CPU of this process's waited-for children: the load tools."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def per_request(before: Snapshot, after: Snapshot, tool_s: float, requests: int,
                forwarder: int) -> dict[str, float]:
    """Microseconds of CPU per request by role. A process that started
    meanwhile counts from zero; one that ended meanwhile is not seen."""
    used = dict.fromkeys(ROLES, 0.0)
    for pid, (ticks, cmd) in after.items():
        start, old = before.get(pid, (0, cmd))
        if old != cmd:  # the pid was reused
            start = 0
        used[role(pid, cmd, forwarder)] += (ticks - start) * TICK_US
    used["load tool"] = tool_s * 1e6
    rows = {key: round(value / max(requests, 1), 1) for key, value in used.items()}
    rows["total"] = round(sum(used.values()) / max(requests, 1), 1)
    return rows


def costed(run, forwarder: int) -> tuple[dict, dict]:
    """A load tool's row, and the CPU per request of everything meanwhile."""
    before, tool_before = snapshot(), children_seconds()
    row = run()
    cpu = per_request(before, snapshot(), children_seconds() - tool_before, row["requests"],
                      forwarder)
    return row, cpu


def rounds(ports: dict[str, int], forwarder: int, settings) -> list[dict]:
    """`settings.rounds` rounds; in each, our client on both paths, then ab
    on both, then wrk on both (slurm-persist first), then ab and wrk again
    with the relays on a core of their own (pinned.py) unless that cannot be."""
    done: list[dict] = []
    cannot = cannot_pin()
    for _ in range(settings.rounds):
        one: dict = {"paths": {}, "tools": {path: {} for path in ports},
                     "cpu": {path: {} for path in ports}}
        for path, port in ports.items():
            one["paths"][path] = client.measure("127.0.0.1", port, settings.download_bytes,
                                                settings.requests)
        runs = {"ab": lambda port: tools.ab("127.0.0.1", port, 50, settings.ab_requests),
                "wrk": lambda port: tools.wrk("127.0.0.1", port, 50, 2, settings.wrk_seconds)}
        for tool, run in runs.items():
            for path, port in ports.items():
                row, cpu = costed(lambda run=run, port=port: run(port), forwarder)
                one["tools"][path][tool], one["cpu"][path][tool] = row, cpu
        if not cannot:
            try:
                pinned(one, ports, runs, forwarder)
            except CannotPin as exc:
                cannot = str(exc)
        if cannot:
            one["pinned_skipped"] = cannot
        done.append(one)
    return done


def pinned(one: dict, ports: dict[str, int], runs: dict, forwarder: int) -> None:
    """Each load tool on each path with the relays on a core of their own, into one."""
    unmovable: set[str] = set()
    for tool, run in runs.items():
        for path, port in ports.items():
            with Pinned(forwarder) as pins:
                row, cpu = costed(lambda run=run, port=port: run(port), forwarder)
            unmovable |= pins.unmovable
            one["tools"][path][PINNED[tool]], one["cpu"][path][PINNED[tool]] = row, cpu
    one["pinned_unmovable"] = sorted(unmovable)


def median(rows: list[dict]) -> dict:
    """Field by field, the median over rounds (numbers only)."""
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]
            if isinstance(rows[0][key], (int, float))}


def summary(done: list[dict]) -> dict:
    """The median of each figure over the rounds, as results' "paths",
    "tools" and "cpu" (the rounds themselves stay in results["rounds"])."""
    paths = (OURS, BASE)
    skipped = [one["pinned_skipped"] for one in done if "pinned_skipped" in one]
    tools = ["ab", "wrk"] if skipped else ["ab", "wrk", *PINNED.values()]
    got = {"paths": {path: median([one["paths"][path] for one in done]) for path in paths},
           "tools": {path: {tool: median([one["tools"][path][tool] for one in done])
                            for tool in tools} for path in paths},
           "cpu": {path: {tool: median([one["cpu"][path][tool] for one in done])
                          for tool in tools} for path in paths}}
    if skipped:
        got["pinned_skipped"] = skipped[0]
    unmovable = sorted({name for one in done for name in one.get("pinned_unmovable", [])})
    if unmovable and not skipped:
        got["pinned_unmovable"] = unmovable
    return got
