"""Processes as the benchmark sees them: the forwarder's pids, memory and
CPU, and the part any process plays on a path (its role)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from local.paths import pid_file


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def forwarder_pid(name: str) -> int:
    return int(pid_file(name).read_text())


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def family(pid: int) -> tuple[int, list[int]]:
    """(worker, its ssh processes) of the process in forwarder.pid: with
    `up --daemonize` that is a supervisor and the forwarder is its forked
    worker; the ssh masters (and their ProxyJump ssh) are the worker's."""
    workers = [child for child in children(pid) if comm(child) != "ssh"]
    worker = workers[0] if workers else pid
    return worker, [each for each in descendants(worker) if comm(each) == "ssh"]


def nofile(pid: int) -> int:
    """The soft limit on open files of a process."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return 0


def stat_ticks(stat: str) -> int:
    """CPU clock ticks (user + system) from the text of a /proc/PID/stat
    (split after the command's closing parenthesis: a command may hold spaces)."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def ticks(pids: list[int]) -> int:
    """CPU clock ticks (user + system) the pids used so far."""
    return sum(stat_ticks(Path(f"/proc/{pid}/stat").read_text()) for pid in pids)


def cpu_percent(before: int, after: int, seconds: float) -> float:
    """% of one core, from two ticks() readings `seconds` apart."""
    return round((after - before) / os.sysconf("SC_CLK_TCK") / seconds * 100, 2)


def rss_mb(pids: list[int]) -> float:
    return round(sum(int(line.split()[1]) for pid in pids
                     for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                     if line.startswith("VmRSS:")) / 1024, 1)


def usage(pids: list[int], seconds: float) -> dict:
    """Summed RSS (MB) and CPU (% of one core) of pids over `seconds`."""
    before, start = ticks(pids), time.monotonic()
    time.sleep(seconds)
    cpu = cpu_percent(before, ticks(pids), time.monotonic() - start)
    return {"rss_mb": rss_mb(pids), "cpu_percent": cpu}


def pids() -> list[int]:
    """Every process's, from /proc."""
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def command(pid: int) -> str:
    """Its command line, "" if it is gone (or a kernel thread)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


PF_KTHREAD = 0x00200000  # include/linux/sched.h


def kernel_thread(pid: int) -> bool:
    """Its flags say so (an empty command line does not: a process that is
    just being exec'd has one too)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone meanwhile
        return False
    return bool(int(stat.rsplit(")", 1)[1].split()[6]) & PF_KTHREAD)


ROLES = ("forwarder", "gate", "ssh", "sshd", "server", "docker", "load tool", "other")


def role(pid: int, cmd: str, forwarder: int) -> str:
    if pid == forwarder:
        return "forwarder"
    if "remote_agent" in cmd:
        return "gate"  # the job's agent: its gate relays, the rest of it sleeps
    if cmd.startswith("sshd"):
        return "sshd"
    if cmd.startswith("ssh "):
        return "ssh"
    if "hpc.py" in cmd:
        return "server"
    if "docker" in cmd:
        return "docker"
    return "other"
