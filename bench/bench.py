"""`invoke bench`: slurm-persist against what an expert does by hand, on the
sandbox cluster, all in one run. Prints a markdown table, writes JSON.

Paths measured, same example server, same client code (bench/client.py):
  slurm-persist   127.0.0.1:PORT of `slurm-persist up` (jumphost, login1, gate)
  reverse mode    the same with --mode reverse (the job's ssh -R to a login node)
  ssh -L          a hand-made `ssh -J jumphost -L PORT:node:port login1` to the
                  same server started by hand on a TCP port (the baseline)
  in-cluster      the client on login1 straight to node:port (the limit)
Also: time from `up` to the first answer (cold and warm), recovery after
scancel under load (and an overlap rollover, full mode), SLURM calls per
hour while healthy, and the forwarder's memory and CPU.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from local.config import Options
from local.sandbox import COMPUTE_NODES, LOGIN_NODES, Sandbox
from local.tunnel import ssh_base

from . import client
from .client import Load

log = logging.getLogger("slurm_persist.bench")

BIN = str(Path(sys.executable).parent / "slurm-persist")
HPC = Path(__file__).resolve().parent.parent / "hpc"


@dataclasses.dataclass
class Settings:
    download_bytes: int = 200 * 10**6
    requests: int = 1000
    slurm_window: float = 300.0
    idle_window: float = 30.0
    overlap: bool = True
    busy_seconds: float = 20.0

    @classmethod
    def short(cls) -> Settings:
        return cls(download_bytes=20 * 10**6, requests=100, slurm_window=20.0, idle_window=5.0,
                   overlap=False, busy_seconds=5.0)


class Bench:
    def __init__(self, options: Options, box: Sandbox, settings: Settings):
        self.options, self.box, self.s = options, box, settings
        self.results: dict = {"settings": dataclasses.asdict(settings)}
        self.port = free_port()
        self.started = time.monotonic()

    def step(self, what: str) -> None:
        """A line per stage: a full run takes about ten minutes."""
        log.info("bench=%s elapsed=%.0fs", what.replace(" ", "-"), time.monotonic() - self.started)

    # -- helpers ---------------------------------------------------------

    def site_args(self, name: str) -> list[str]:
        o = self.options
        args = ["--name", name, "--login-node", o.login_node, "--jumphost",
                o.jumphost, "--jumphost-username", o.jumphost_username,
                "--username", o.username, "--ssh-config", o.ssh_config]
        for fallback in o.fallback_login_nodes:
            args += ["--fallback-login-node", fallback]
        return args

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([BIN, *args], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=600)
        if check and result.returncode != 0:
            raise RuntimeError(f"slurm-persist {args[0]} failed: {result.stderr.strip()[-500:]}")
        return result

    def up(self, name: str, *extra: str, port: int | None = None) -> float:
        """Seconds from `up --daemonize` to the first 200 on the local port."""
        port = port or self.port
        start = time.monotonic()
        self.cli("up", *self.site_args(name), "--local-port", str(port), "--daemonize",
                 "--app-dir", str(HPC), "--heartbeat-time", "2",
                 "--look-interval", "1", *extra)
        client.latencies("127.0.0.1", port, 1, keepalive=False)
        return time.monotonic() - start

    def down(self, name: str) -> None:
        self.cli("down", *self.site_args(name), check=False)

    def on_login(self, command: str, stdin: str | None = None) -> str:
        argv = [*ssh_base(self.options), self.options.login_node, command]
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True,
                              timeout=600).stdout

    # -- measurements ----------------------------------------------------

    def run(self) -> dict:
        name = "bench"
        self.on_login(f"rm -rf ~/.slurm-persist/services/{name} ~/.slurm-persist/venvs/{name}")
        self.results["paths"] = {}
        try:
            self.step("startup cold")
            self.results["startup_cold_s"] = self.up(name)
            self.step("forwarder cost")
            self.forwarder_cost(name)
            self.step("throughput and latency")
            self.throughput(name)
            self.step("slurm calls")
            self.slurm_calls()
            self.step("recovery after scancel")
            self.results["recovery_scancel"] = self.recovery(name)
            self.down(name)
            self.step("startup warm")
            self.results["startup_warm_s"] = self.up(name)
            self.down(name)
            self.step("replicas")
            self.results["replicas"] = self.replicas(name)
            if self.s.overlap:
                self.step("overlap rollover")
                self.up(name, "--sbatch-option=--time=2", "--overlap-minutes", "1",
                        "--warn-seconds", "20")
                self.results["rollover_overlap"] = self.rollover(name)
        finally:
            self.down(name)
        self.step("done")
        return self.results

    def replicas(self, name: str) -> dict:
        """A CPU-bound endpoint (GET /work?ms=20) from 8 clients at once,
        served by one replica, then by two (on the sandbox's two nodes)."""
        rows = {}
        for count in (1, 2):
            service, port = f"{name}-r{count}", free_port()
            try:
                self.up(service, "--replicas", str(count), port=port)
                deadline = time.monotonic() + 90
                while (len(client.busy_rate("127.0.0.1", port, 1, 4, 1)["jobs"]) < count
                       and time.monotonic() < deadline):
                    time.sleep(1)
                rows[str(count)] = client.busy_rate("127.0.0.1", port, self.s.busy_seconds, 8, 20)
            finally:
                self.down(service)
        return rows

    def throughput(self, name: str) -> None:
        args = (self.s.download_bytes, self.s.requests)
        rows = self.results["paths"]
        rows["slurm-persist"] = client.measure("127.0.0.1", self.port, *args)
        rows["slurm-persist, reverse mode"] = self.reverse_path(args)
        node, port, job = self.plain_server(name)
        local = free_port()
        tunnel = subprocess.Popen([*ssh_base(self.options), "-N", "-o", "ExitOnForwardFailure=yes",
                                   "-L", f"127.0.0.1:{local}:{node}:{port}",
                                   self.options.login_node], stdin=subprocess.DEVNULL)
        try:
            client.wait_port("127.0.0.1", local)
            rows["ssh -L (baseline)"] = client.measure("127.0.0.1", local, *args)
            source = (Path(__file__).parent / "client.py").read_text()
            out = self.on_login(f"python3 - {node} {port} {args[0]} {args[1]}", stdin=source)
            rows["in-cluster (limit)"] = json.loads(out)
        finally:
            tunnel.terminate()
            self.on_login(f"scancel {job}")

    def reverse_path(self, args: tuple[int, int]) -> dict:
        name, port = "bench-reverse", free_port()
        self.up(name, "--mode", "reverse", port=port)
        try:
            return client.measure("127.0.0.1", port, *args)
        finally:
            self.down(name)

    def plain_server(self, name: str) -> tuple[str, int, str]:
        """The same server, started by hand on a TCP port, as an expert would."""
        port = 48000 + os.getpid() % 1000
        app = f"~/.slurm-persist/services/{name}/app"
        wrap = (f"cd {app} && HOST=0.0.0.0 PORT={port} "
                f"exec ~/.slurm-persist/venvs/{name}/bin/python hpc.py")
        job = self.on_login(f"sbatch --parsable --job-name=bench-plain --wrap {shlex.quote(wrap)}")
        job = job.strip().split(";")[0]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            node = self.on_login(f"squeue -h -j {job} -t RUNNING -o %N").strip()
            if node and "200" in self.on_login(
                    f"curl -s -o /dev/null -w %{{http_code}} http://{node}:{port}/health || true"):
                return node, port, job
            time.sleep(1)
        raise RuntimeError("the hand-started server did not answer within 60 s")

    def slurm_calls(self) -> None:
        """SLURM client calls on every host while the service is healthy."""
        hosts = LOGIN_NODES + COMPUTE_NODES
        for host in hosts:
            self.box.exec(host, "sh", "-c", "rm -f /var/log/slurm-calls/*.log")
        time.sleep(self.s.slurm_window)
        calls = 0
        for host in hosts:
            out = self.box.exec(host, "sh", "-c",
                                "cat /var/log/slurm-calls/*.log 2>/dev/null || true")
            calls += len([line for line in out.splitlines() if line.strip()])
        self.results["slurm_calls_per_hour"] = round(calls * 3600 / self.s.slurm_window, 1)

    def forwarder_cost(self, name: str) -> None:
        pid = int((state_home() / "slurm-persist/services" / name / "forwarder.pid").read_text())
        pids = [pid] + children(pid)
        idle = usage(pids, self.s.idle_window)
        with Load(self.port, every=0.02, timeout=30):
            busy = usage(pids, self.s.idle_window)
        self.results["forwarder"] = {"idle": idle, "under_load_50rps": busy}

    def recovery(self, name: str) -> dict:
        with Load(self.port) as load:
            while not load.jobs():
                time.sleep(0.2)
            old = load.jobs()[-1]
            t0 = time.time()
            self.on_login(f"scancel {old}")
            deadline = time.monotonic() + 120
            while len(load.jobs()) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1)
        new = next((j for j in load.jobs() if j != old), None)
        return {"seconds": round(load.first_served_by(new, t0), 2) if new else None,
                "requests": len(load.results), "failed": len(load.failures())}

    def rollover(self, name: str) -> dict:
        with Load(self.port) as load:
            while not load.jobs():
                time.sleep(0.2)
            old = load.jobs()[-1]
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and self.on_login(
                    f"squeue -h -j {old} -o %T || true").strip():
                time.sleep(2)
            time.sleep(2)
        return {"requests": len(load.results), "failed": len(load.failures()),
                "jobs": load.jobs()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def state_home() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def usage(pids: list[int], seconds: float) -> dict:
    """Summed RSS (MB) and CPU (% of one core) of pids over `seconds`."""
    def ticks() -> int:
        total = 0
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total
    before, start = ticks(), time.monotonic()
    time.sleep(seconds)
    cpu = (ticks() - before) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - start) * 100
    rss = sum(int(line.split()[1]) for pid in pids
              for line in Path(f"/proc/{pid}/status").read_text().splitlines()
              if line.startswith("VmRSS:")) / 1024
    return {"rss_mb": round(rss, 1), "cpu_percent": round(cpu, 2)}


def table(results: dict) -> str:
    """The markdown report; ratios against the baseline, goals beside them."""
    paths = results["paths"]
    base = paths["ssh -L (baseline)"]
    lines = ["| path | download MB/s | p50 new conn ms | p99 new conn ms | p50 keep-alive ms | "
             "p99 keep-alive ms |", "|---|---|---|---|---|---|"]
    for name, row in paths.items():
        lines.append(f"| {name} | {row['mb_per_s']:.0f} | {row['p50_new_ms']:.2f} | "
                     f"{row['p99_new_ms']:.2f} | {row['p50_keepalive_ms']:.2f} | "
                     f"{row['p99_keepalive_ms']:.2f} |")
    ours = paths["slurm-persist"]
    fwd = results["forwarder"]
    rec = results["recovery_scancel"]
    lines += ["", "| measure | value | goal |", "|---|---|---|",
              f"| throughput vs baseline | {ours['mb_per_s'] / base['mb_per_s']:.2f}x | >= 0.9x |",
              f"| p50 (new connections) vs baseline | "
              f"{ours['p50_new_ms'] - base['p50_new_ms']:+.2f} ms | <= +1 ms |",
              f"| `up` to first answer, cold (nothing deployed) | "
              f"{results['startup_cold_s']:.1f} s | |",
              f"| `up` to first answer, warm (deployed, no chain) | "
              f"{results['startup_warm_s']:.1f} s | |",
              f"| recovery after scancel (no overlap) | {rec['seconds']} s, {rec['failed']} of "
              f"{rec['requests']} requests failed | <= heartbeat + 5 s |",
              f"| SLURM calls per hour while healthy | {results['slurm_calls_per_hour']} | 0 |",
              f"| forwarder idle | {fwd['idle']['rss_mb']} MB RSS, "
              f"{fwd['idle']['cpu_percent']}% CPU"
              f" | < 60 MB, < 1% |",
              f"| forwarder at 50 req/s | {fwd['under_load_50rps']['rss_mb']} MB RSS, "
              f"{fwd['under_load_50rps']['cpu_percent']}% CPU | |"]
    if "replicas" in results:
        one, two = results["replicas"]["1"], results["replicas"]["2"]
        lines.append(f"| CPU-bound endpoint (20 ms a request, 8 clients): 1 replica, 2 replicas "
                     f"| {one['req_per_s']} and {two['req_per_s']} req/s "
                     f"({two['req_per_s'] / max(one['req_per_s'], 0.1):.2f}x; "
                     f"{one['failed'] + two['failed']} failed) | close to 2x |")
    if "rollover_overlap" in results:
        roll = results["rollover_overlap"]
        lines.append(f"| rollover with overlap | {roll['failed']} of {roll['requests']} requests "
                     f"failed | 0 |")
    return "\n".join(lines)


def main(options: Options, box: Sandbox, short: bool, out: Path) -> str:
    results = Bench(options, box, Settings.short() if short else Settings()).run()
    out.write_text(json.dumps(results, indent=2))
    return table(results)
