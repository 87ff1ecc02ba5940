"""`invoke bench`: slurm-persist against what an expert does by hand, on the
sandbox cluster, all in one run. Prints a markdown table, writes JSON.

Paths measured, same example server, same client code (bench/client.py):
  slurm-persist   127.0.0.1:PORT of `slurm-persist up` (jumphost, login1, gate)
  reverse mode    the same with --mode reverse (the job's ssh -R to a login node)
  ssh -L          a hand-made `ssh -J jumphost -L PORT:node:port login1` to the
                  same server started by hand on a TCP port (the baseline)
  in-cluster      the client on login1 straight to node:port (the limit)
On slurm-persist and the ssh -L baseline also: ab (a new connection per
request) and wrk (keep-alive) at 50 connections (bench/tools.py).
Also: time from `up` to the first answer (cold and warm, and when the
warm job's server passed its health check), recovery after scancel under
load (and an overlap rollover, full mode), SLURM calls per hour while
healthy, the forwarder's memory and CPU, and its memory holding 10,000
idle connections (bench/idle.py, full mode). The report: bench/table.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from local.config import Options
from local.sandbox import COMPUTE_NODES, LOGIN_NODES, Sandbox
from local.tunnel import ssh_base

from . import client, idle, outages, sidebyside, tools
from .client import Load
from .procs import children, family, forwarder_pid, free_port, rss_mb, usage
from .table import BASE, OURS, table

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
    ab_requests: int = 5000
    wrk_seconds: float = 20.0
    idle_connections: int = 10_000
    rounds: int = 3  # the two paths in turn (sidebyside.py)

    @classmethod
    def short(cls) -> Settings:
        return cls(download_bytes=20 * 10**6, requests=100, slurm_window=20.0, idle_window=5.0,
                   overlap=False, busy_seconds=5.0, ab_requests=500, wrk_seconds=3.0,
                   idle_connections=200, rounds=1)


class Bench:
    def __init__(self, options: Options, box: Sandbox, settings: Settings):
        self.options, self.box, self.s = options, box, settings
        self.results: dict = {"settings": dataclasses.asdict(settings)}
        self.port, self.metrics_port = free_port(), free_port()
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
        tools.require("ab", "wrk")  # before minutes of work, not after
        name = "bench"
        self.on_login(f"rm -rf ~/.slurm-persist/services/{name} ~/.slurm-persist/venvs/{name}")
        try:
            self.step("startup cold")
            self.results["startup_cold_s"] = self.up(name, "--metrics-port",
                                                     str(self.metrics_port))
            self.step("forwarder cost")
            self.forwarder_cost(name)
            self.step("throughput and latency")
            self.throughput(name)
            self.step("slurm calls")
            self.results["slurm_calls_per_hour"] = slurm_calls(self.box, self.s.slurm_window)
            self.step("recovery after scancel")
            self.results["recovery_scancel"] = outages.recovery(self.port, self.on_login)
            self.down(name)
            self.step("startup warm")
            self.results["startup_warm"] = self.warm_startup(name)
            self.results["startup_warm_s"] = self.results["startup_warm"]["seconds"]
            if self.s.idle_connections:
                self.step(f"{self.s.idle_connections} idle connections")
                self.results["idle_held"] = idle.hold(forwarder_pid(name), self.port,
                                                      self.metrics_port, self.s.idle_connections)
            self.down(name)
            self.step("replicas")
            self.results["replicas"] = self.replicas(name)
            if self.s.overlap:
                self.step("overlap rollover")
                self.up(name, "--sbatch-option=--time=2", "--overlap-minutes", "1",
                        "--warn-seconds", "20")
                self.results["rollover_overlap"] = outages.rollover(self.port, self.on_login)
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
        """slurm-persist and the hand-made tunnel in turn (sidebyside.py),
        then reverse mode and the in-cluster client once each."""
        args = (self.s.download_bytes, self.s.requests)
        node, port, job = self.plain_server(name)
        local = free_port()
        tunnel = subprocess.Popen([*ssh_base(self.options), "-N", "-o", "ExitOnForwardFailure=yes",
                                   "-L", f"127.0.0.1:{local}:{node}:{port}",
                                   self.options.login_node], stdin=subprocess.DEVNULL)
        failed = lambda: idle.metric(self.metrics_port,  # noqa: E731
                                     "slurm_persist_connections_failed_total") or 0.0
        try:
            client.wait_port("127.0.0.1", local)
            before = failed()
            worker, _ = family(forwarder_pid(name))
            done = sidebyside.rounds({OURS: self.port, BASE: local}, worker, self.s)
            self.results["rounds"] = done
            self.results.update(sidebyside.summary(done))
            # ab counts a connection closed without an answer as complete (-l):
            # the forwarder's own count of those, over every round.
            self.results["tools"][OURS]["forwarder_failed"] = int(failed() - before)
            source = (Path(__file__).parent / "client.py").read_text()
            out = self.on_login(f"python3 - {node} {port} {args[0]} {args[1]}", stdin=source)
            in_cluster = json.loads(out)
        finally:
            tunnel.terminate()
            self.on_login(f"scancel {job}")
        self.results["paths"]["slurm-persist, reverse mode"] = self.reverse_path(args)
        self.results["paths"]["in-cluster (limit)"] = in_cluster

    def warm_startup(self, name: str) -> dict:
        """`up` with the files deployed: when the job's server passed its health
        check, from the job's log (its `state=serving` line; the containers
        share this host's clock), and when a client asking from the start got
        its first answer on the local port."""
        got: list[float] = []
        asker = threading.Thread(target=lambda: got.append(
            client.first_answer("127.0.0.1", self.port, 300)), daemon=True)
        start = time.time()
        asker.start()
        seconds = self.up(name, "--metrics-port", str(self.metrics_port))
        asker.join(timeout=300)
        answered = got[0] if got and got[0] else start + seconds
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=30) as page:
            job = json.loads(page.read())["job_id"]
        healthy = healthy_at(self.on_login, name, job)
        return {"seconds": round(answered - start, 2), "up_returned_s": round(seconds, 2),
                "job": job, "to_health_s": None if healthy is None else round(healthy - start, 2),
                "health_to_answer_s": None if healthy is None else round(answered - healthy, 2)}

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

    def forwarder_cost(self, name: str) -> None:
        pid = forwarder_pid(name)
        pids = [pid] + children(pid)
        idle = usage(pids, self.s.idle_window)
        worker, ssh = family(pid)  # the RSS above is the supervisor's and its worker's
        idle.update(supervisor_rss_mb=rss_mb([pid]), worker_rss_mb=rss_mb([worker]),
                    ssh_rss_mb=rss_mb(ssh))
        with Load(self.port, every=0.02, timeout=30):
            busy = usage(pids, self.s.idle_window)
        self.results["forwarder"] = {"idle": idle, "under_load_50rps": busy}


def slurm_calls(box: Sandbox, window: float) -> float:
    """SLURM client calls per hour on every host while the service is healthy."""
    hosts = LOGIN_NODES + COMPUTE_NODES
    for host in hosts:
        box.exec(host, "sh", "-c", "rm -f /var/log/slurm-calls/*.log")
    time.sleep(window)
    calls = 0
    for host in hosts:
        out = box.exec(host, "sh", "-c", "cat /var/log/slurm-calls/*.log 2>/dev/null || true")
        calls += len([line for line in out.splitlines() if line.strip()])
    return round(calls * 3600 / window, 1)


def healthy_at(on_login: Callable[[str], str], name: str, job: str) -> float | None:
    """When the job's server passed its health check: its agent's
    `state=serving port` line in the job log, None if not there."""
    out = on_login(f"date +%z; grep -h 'state=serving port' "
                   f"~/.slurm-persist/services/{name}/logs/{job}.out || true")
    zone, _, line = out.partition("\n")
    return log_time(line, zone.strip()) if line.strip() else None


def log_time(line: str, zone: str) -> float:
    """Unix time of a job log line's stamp ("2026-11-25 15:36:48,123 ..."),
    read in the cluster's zone (`date +%z`)."""
    day, clock = line.split()[:2]
    stamp = datetime.datetime.strptime(f"{day} {clock} {zone}", "%Y-%m-%d %H:%M:%S,%f %z")
    return stamp.timestamp()


def main(options: Options, box: Sandbox, short: bool, out: Path) -> str:
    results = Bench(options, box, Settings.short() if short else Settings()).run()
    out.write_text(json.dumps(results, indent=2))
    return table(results)
