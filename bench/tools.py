"""Real load tools beside our own client: ApacheBench (`ab`, Debian's
apache2-utils), a new connection per request, and `wrk`, keep-alive.
Both are run as argv lists; their text output is parsed here.

`bash dev.sh bench` (and `bash dev.sh test`) installs them when missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

PACKAGES = {"ab": "apache2-utils", "wrk": "wrk"}


class ToolMissing(Exception):
    """A load tool is not installed: the bench stops, naming the package."""


def require(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            raise ToolMissing(f"bench: `{tool}` not found: install Debian's {PACKAGES[tool]} "
                              f"(bash dev.sh bench installs it)")


def ab(host: str, port: int, concurrency: int, requests: int, path: str = "/health") -> dict:
    """`ab -c C -n N`: each request on a new connection (no -k). -l: /health's
    length varies (its uptime), which ab would count as failures; -r: a
    socket error is counted, not the end of the run."""
    require("ab")
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "percentiles.csv"
        out = run(["ab", "-l", "-r", "-c", str(concurrency), "-n", str(requests),
                   "-e", str(csv), f"http://{host}:{port}{path}"], timeout=600)
        return parse_ab(out, csv.read_text() if csv.exists() else "")


def wrk(host: str, port: int, connections: int, threads: int, seconds: float,
        path: str = "/health") -> dict:
    """`wrk -c C -t T -d Ds --latency`: keep-alive connections."""
    require("wrk")
    out = run(["wrk", "-c", str(connections), "-t", str(threads), "-d", f"{seconds:g}s",
               "--latency", f"http://{host}:{port}{path}"], timeout=seconds + 120)
    return parse_wrk(out)


def run(argv: list[str], timeout: float) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}): "
                           f"{(result.stderr or result.stdout).strip()[-300:]}")
    return result.stdout


def _number(pattern: str, text: str, what: str) -> float:
    match = re.search(pattern, text, re.M)
    if match is None:
        raise ValueError(f"no {what} in the tool's output")
    return float(match.group(1))


def parse_ab(text: str, csv: str = "") -> dict:
    """ab's summary; median and p99 from its -e CSV (in ms, with decimals)
    when given, else from its "Percentage of the requests" table (whole ms)."""
    percent: dict[int, float] = {}
    for line in csv.splitlines()[1:]:
        share, _, ms = line.partition(",")
        if share.strip().isdigit() and ms.strip():
            percent[int(share)] = float(ms)
    if not percent:
        for share, ms in re.findall(r"^\s*(\d+)%\s+(\d+)", text, re.M):
            percent[int(share)] = float(ms)
    if 50 not in percent or 99 not in percent:
        raise ValueError("no 50% and 99% percentiles in ab's output")
    non_2xx = re.search(r"^Non-2xx responses:\s+(\d+)", text, re.M)
    return {"req_per_s": _number(r"^Requests per second:\s+([\d.]+)", text, "Requests per second"),
            "p50_ms": percent[50], "p99_ms": percent[99],
            "requests": int(_number(r"^Complete requests:\s+(\d+)", text, "Complete requests")),
            "failed": int(_number(r"^Failed requests:\s+(\d+)", text, "Failed requests"))
            + (int(non_2xx.group(1)) if non_2xx else 0)}


UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * UNITS[unit]


def parse_wrk(text: str) -> dict:
    """wrk's --latency distribution, rate, and its error lines (absent when none)."""
    shares = dict(re.findall(r"^\s+(\d+)%\s+([\d.]+(?:us|ms|s|m))\s*$", text, re.M))
    if "50" not in shares or "99" not in shares:
        raise ValueError("no 50% and 99% latencies in wrk's output (run with --latency)")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       text)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return {"req_per_s": _number(r"^Requests/sec:\s+([\d.]+)", text, "Requests/sec"),
            "p50_ms": _ms(shares["50"]), "p99_ms": _ms(shares["99"]),
            "requests": int(_number(r"^\s+(\d+) requests in", text, "requests in")),
            "failed": (sum(int(n) for n in errors.groups()) if errors else 0)
            + (int(non_2xx.group(1)) if non_2xx else 0)}
