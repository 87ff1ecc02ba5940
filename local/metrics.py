"""Prometheus metrics of one forwarder, on 127.0.0.1:metrics_port.

Nothing could be monitored but by reading logs (#19). With metrics_port
set, the forwarder serves the Prometheus text format there (the client
library's own server, in a thread; loopback only, like the service port).
Each forwarder has its own registry, so tests and several forwarders in
one process never share counters.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info
from prometheus_client.exposition import start_http_server

STATES = ["starting", "serving", "waiting", "stopped"]


class Metrics:
    def __init__(self, service: str):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.state = Enum("slurm_persist_state", "The forwarder's state", states=STATES,
                          registry=r)
        self.job = Info("slurm_persist_job", "The job the port leads to", registry=r)
        self.ends_at = Gauge("slurm_persist_job_end_time_seconds",
                             "The serving job's time limit, Unix time (0: unknown)", registry=r)
        self.time_left = Gauge("slurm_persist_job_time_left_seconds",
                               "Seconds until the serving job's time limit", registry=r)
        self.time_left.set_function(self._time_left)
        self.switches = Counter("slurm_persist_switches", "Moves to another job", registry=r)
        self.open = Gauge("slurm_persist_connections_open", "Client connections open",
                          registry=r)
        self.connections = Counter("slurm_persist_connections", "Client connections accepted",
                                   registry=r)
        self.failed = Counter("slurm_persist_connections_failed",
                              "Client connections closed without reaching the service",
                              registry=r)
        self.held = Counter("slurm_persist_connections_held",
                            "Client connections that waited for a route", registry=r)
        self.bytes = Counter("slurm_persist_bytes", "Bytes relayed", ["direction"], registry=r)
        self.up, self.down = (self.bytes.labels("up").inc, self.bytes.labels("down").inc)
        self.probe = Histogram("slurm_persist_probe_seconds", "Health probe latency",
                               buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                               registry=r)
        self.slurm_calls = Counter("slurm_persist_slurm_calls",
                                   "SLURM commands the forwarder ran", registry=r)
        self.info = Info("slurm_persist_service", "The service", registry=r)
        self.info.info({"service": service})
        self._server: Any = None  # the library's WSGI server, once serving
        self._ends_at = 0.0

    def serve(self, port: int) -> None:
        self._server, _ = start_http_server(port, addr="127.0.0.1", registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def on_job(self, job_id: str, node: str, login: str, ends_at: float | None) -> None:
        self.job.info({"job_id": job_id, "node": node, "login": login})
        self._ends_at = ends_at or 0.0
        self.ends_at.set(self._ends_at)

    def _time_left(self) -> float:
        return max(0.0, self._ends_at - time.time()) if self._ends_at else 0.0
