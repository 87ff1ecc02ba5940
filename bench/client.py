"""HTTP client measurements, standard library only: the same code runs on
the laptop and, fed to python3 over ssh, on a login node.

    python3 client.py HOST PORT BULK_BYTES REQUESTS   prints JSON
"""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import sys
import threading
import time
import urllib.request


def download(host: str, port: int, size: int) -> float:
    """MB/s of one GET /bytes?n=size."""
    conn = http.client.HTTPConnection(host, port, timeout=120)
    start = time.perf_counter()
    conn.request("GET", f"/bytes?n={size}")
    response = conn.getresponse()
    got = 0
    while True:
        chunk = response.read(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    elapsed = time.perf_counter() - start
    conn.close()
    if got != size:
        raise RuntimeError(f"download got {got} of {size} bytes")
    return size / elapsed / 1e6


def upload(host: str, port: int, size: int) -> float:
    """MB/s of one POST /upload of size bytes, until the server has counted them."""
    block = b"x" * (1 << 20)

    def body():
        left = size
        while left > 0:
            yield block[:left]
            left -= len(block)
    conn = http.client.HTTPConnection(host, port, timeout=120)
    start = time.perf_counter()
    conn.request("POST", "/upload", body=body(),
                 headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
    response = conn.getresponse()
    answer = response.read()
    elapsed = time.perf_counter() - start
    conn.close()
    if response.status != 200 or json.loads(answer)["bytes"] != size:
        raise RuntimeError(f"upload of {size} bytes answered {response.status}: {answer[:200]!r}")
    return size / elapsed / 1e6


def latencies(host: str, port: int, count: int, keepalive: bool) -> list[float]:
    """Milliseconds per GET /health, each on a new connection or all on one."""
    times = []
    conn = http.client.HTTPConnection(host, port, timeout=30) if keepalive else None
    for _ in range(count):
        if not keepalive:
            conn = http.client.HTTPConnection(host, port, timeout=30)
        start = time.perf_counter()
        conn.request("GET", "/health")
        response = conn.getresponse()
        response.read()
        times.append((time.perf_counter() - start) * 1000)
        if response.status != 200:
            raise RuntimeError(f"GET /health answered {response.status}")
        if not keepalive:
            conn.close()
    conn.close()
    return times


def first_answer(host: str, port: int, timeout: float) -> float:
    """Unix time of the first 200 to GET /health, asked again every 20 ms
    while the port is closed (a connection held while no job serves waits
    for its answer); 0.0 if none within timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health",
                                        timeout=max(0.1, deadline - time.monotonic())) as page:
                if page.status == 200:
                    return time.time()
        except OSError:
            time.sleep(0.02)
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def measure(host: str, port: int, size: int, count: int) -> dict:
    new = latencies(host, port, count, keepalive=False)
    kept = latencies(host, port, count, keepalive=True)
    return {"mb_per_s": download(host, port, size), "upload_mb_per_s": upload(host, port, size),
            "p50_new_ms": statistics.median(new), "p99_new_ms": percentile(new, 99),
            "p50_keepalive_ms": statistics.median(kept), "p99_keepalive_ms": percentile(kept, 99)}


class Load:
    """A bounded client load on 127.0.0.1:port: one GET /health per `every`
    seconds, each on a new connection, from background threads. Records what
    each request got, to count failures and measure outages."""

    def __init__(self, port: int, every: float = 0.05, limit: int = 20000, timeout: float = 60):
        self.port, self.every, self.limit, self.timeout = port, every, limit, timeout
        self.results: list[tuple[float, float, str | None, str]] = []  # start, end, job, error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=self.timeout + 5)

    def _run(self):
        pool: list[threading.Thread] = []
        while not self._stop.is_set() and len(pool) < self.limit:
            thread = threading.Thread(target=self._one, daemon=True)
            thread.start()
            pool.append(thread)
            time.sleep(self.every)
        for thread in pool:
            thread.join(timeout=self.timeout + 5)

    def _one(self):
        start = time.time()
        url = f"http://127.0.0.1:{self.port}/health"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                job, error = json.loads(response.read())["job_id"], ""
        except Exception as exc:  # any failure counts; the caller reports which
            job, error = None, f"{type(exc).__name__}: {exc}"
        self.results.append((start, time.time(), job, error))

    def failures(self) -> list[tuple[float, float, str | None, str]]:
        return [r for r in self.results if r[3]]

    def jobs(self) -> list[str]:
        seen: list[str] = []
        for _, _, job, _ in sorted(self.results):
            if job and job not in seen:
                seen.append(job)
        return seen

    def outage_after(self, t0: float) -> float:
        """Longest wait of a request started after t0 (held or failed)."""
        return max((end - start for start, end, _, _ in self.results if start >= t0), default=0.0)

    def first_served_by(self, job: str, after: float) -> float:
        times = [end for start, end, j, e in self.results if j == job and start >= after]
        return min(times) - after if times else float("inf")


def busy_rate(host: str, port: int, seconds: float, clients: int, ms: int) -> dict:
    """Requests/s of GET /work?ms=ms from `clients` threads for `seconds`,
    each on a new connection, and which jobs answered."""
    done: list[str] = []
    failed = [0]
    stop = time.monotonic() + seconds

    def one_client() -> None:
        while time.monotonic() < stop:
            try:
                with urllib.request.urlopen(f"http://{host}:{port}/work?ms={ms}",
                                            timeout=60) as response:
                    done.append(json.loads(response.read())["job_id"])
            except OSError:
                failed[0] += 1
    threads = [threading.Thread(target=one_client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"req_per_s": round(len(done) / seconds, 1), "failed": failed[0],
            "jobs": sorted(set(done))}


def wait_port(host: str, port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), 2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{host}:{port} did not open within {timeout:.0f} s")


if __name__ == "__main__":
    host, port, size, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(measure(host, port, size, count)))
