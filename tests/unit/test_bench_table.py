"""The benchmark's report from a results dict (no cluster): every #17 goal
has its row, with the ratio or difference it is judged by."""

from __future__ import annotations

import datetime

from bench.bench import Settings, log_time
from bench.table import table


def path(mb: float, p50: float) -> dict:
    return {"mb_per_s": mb, "upload_mb_per_s": mb / 2, "p50_new_ms": p50, "p99_new_ms": 9.0,
            "p50_keepalive_ms": 1.0, "p99_keepalive_ms": 2.0}


def tool(rate: float, p50: float) -> dict:
    return {"req_per_s": rate, "p50_ms": p50, "p99_ms": p50 * 2, "requests": 5000, "failed": 0}


RESULTS = {
    "settings": {"ab_requests": 5000, "wrk_seconds": 20.0},
    "paths": {"slurm-persist": path(90, 2.3), "ssh -L (baseline)": path(100, 2.0)},
    "tools": {"slurm-persist": {"ab": tool(1000, 47), "wrk": tool(7100, 6.3)},
              "ssh -L (baseline)": {"ab": tool(3000, 15), "wrk": tool(7000, 5.0)}},
    "startup_cold_s": 6.7, "startup_warm_s": 9.0,
    "startup_warm": {"seconds": 9.0, "up_returned_s": 9.4, "to_health_s": 3.5,
                     "health_to_answer_s": 5.5, "job": "7"},
    "idle_held": {"wanted": 10000, "held": 9800, "why_fewer": "connection 9801: timed out",
                  "rss_mb": 150.0, "with_ssh_mb": 230.0, "ssh_processes": 26},
    "recovery_scancel": {"seconds": 1.9, "requests": 64, "failed": 0},
    "slurm_calls_per_hour": 12.0,
    "forwarder": {"idle": {"rss_mb": 84.4, "cpu_percent": 0.6, "supervisor_rss_mb": 39.0,
                           "worker_rss_mb": 45.4, "ssh_rss_mb": 16.1},
                  "under_load_50rps": {"rss_mb": 84.5, "cpu_percent": 6.5}},
}


def row(report: str, start: str) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith(f"| {start}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_each_goal_with_both_figures_the_ratio_and_whether_met():
    report = table(RESULTS)
    assert row(report, "new connections at c=50 (ab), rate")[1:] == [
        "1000 req/s", "3000 req/s", "0.33x", ">= 0.9x", "no"]
    assert row(report, "new connections at c=50 (ab), median")[3:] == ["+32.00 ms", "<= +2 ms",
                                                                       "no"]
    assert row(report, "bulk download")[3:] == ["0.90x", ">= 0.95x", "no"]
    assert row(report, "bulk upload")[3] == "0.90x"
    assert row(report, "p50 of a new connection at c=1")[3:] == ["+0.30 ms", "<= +0.5 ms", "yes"]
    assert row(report, "keep-alive at c=50 (wrk)")[3:] == ["1.01x", ">= 1.0x", "yes"]
    up = row(report, "`up` with files deployed")
    assert up[1] == ("5.50 s (`up` to health 3.5 s, to first answer 9.0 s; `up` returned at "
                     "9.4 s)")
    assert up[4:] == ["<= 1 s", "no"]
    idle = row(report, "10,000 idle connections held")
    assert "150 MB (230 MB with its 26 ssh processes) with 9,800 held" in idle[1]
    assert "connection 9801: timed out" in idle[1] and idle[4:] == ["< 200 MB", "yes"]


def test_the_load_tools_side_by_side():
    report = table(RESULTS)
    assert row(report, "`ab -c50 -n5000`")[1:] == ["slurm-persist", "1000", "47.00", "94.00",
                                                    "0 of 5000"]
    assert row(report, "`wrk -c50 -t2 -d20s`")[1] == "slurm-persist"
    assert ("| forwarder idle | 84.4 MB RSS (supervisor 39.0 + worker 45.4; its ssh processes "
            "16.1 MB more), 0.6% CPU | < 60 MB, < 1% |") in report


def test_with_rounds_a_goal_is_judged_on_the_median_rounds_ratio():
    rounds = [{"paths": RESULTS["paths"],
               "tools": {"slurm-persist": {"ab": tool(ours, 40), "wrk": tool(7100, 6.3)},
                         "ssh -L (baseline)": {"ab": tool(base, 40 + plus), "wrk": tool(7000, 5)}}}
              for ours, base, plus in ((900, 1000, 1.0), (1100, 1000, -3.0), (950, 1100, 0.5))]
    report = table({**RESULTS, "rounds": rounds})
    # ratios 0.90, 1.10 and 0.86: the median round's, not the ratio of the medians (0.95)
    assert row(report, "new connections at c=50 (ab), rate")[1:] == [
        "950 req/s", "1000 req/s", "0.90x (0.86x to 1.10x)", ">= 0.9x", "yes"]
    # ours 40 ms in each round, the baseline's 41, 37 and 40.5
    assert row(report, "new connections at c=50 (ab), median")[3:] == [
        "-0.50 ms (-1.00 to +3.00)", "<= +2 ms", "yes"]


def test_cpu_per_request_by_role_for_each_tool_and_path():
    cost = {"forwarder": 250.0, "gate": 260.0, "ssh": 180.0, "total": 1200.0}
    base = {"forwarder": 0.0, "gate": 1.0, "ssh": 140.0, "total": 980.0}
    report = table({**RESULTS, "cpu": {"slurm-persist": {"ab": cost, "wrk": cost},
                                       "ssh -L (baseline)": {"ab": base, "wrk": base}}})
    assert row(report, "CPU per request, us") == ["CPU per request, us", "path", "forwarder",
                                                  "gate", "ssh", "total"]
    assert row(report, "ab, new connections")[1:] == ["slurm-persist", "250", "260", "180", "1200"]
    assert row(report, "wrk, keep-alive | ssh -L")[2:] == ["0", "1", "140", "980"]


def test_short_mode_keeps_ab_and_wrk_short():
    short = Settings.short()
    assert short.ab_requests <= 500 and short.wrk_seconds <= 3 and short.idle_connections < 1000


def test_a_job_log_stamp_is_read_in_the_clusters_zone():
    stamp = log_time("2026-11-25 15:36:48,250 slurm-persist job=7 state=serving port=1", "+0100")
    when = datetime.datetime(2026, 11, 25, 14, 36, 48, 250000, tzinfo=datetime.timezone.utc)
    assert stamp == when.timestamp()


def test_the_load_tools_with_the_relays_on_a_core_of_their_own_or_why_not():
    pinned = {**RESULTS, "tools": {
        "slurm-persist": {**RESULTS["tools"]["slurm-persist"], "wrk-pinned": tool(3150, 13),
                          "ab-pinned": tool(1100, 45)},
        "ssh -L (baseline)": {**RESULTS["tools"]["ssh -L (baseline)"],
                              "wrk-pinned": tool(3000, 16), "ab-pinned": tool(1000, 42)}}}
    report = table(pinned)
    assert row(report, "keep-alive at c=50 (wrk), rate, the relays on a core")[1:] == [
        "3150 req/s", "3000 req/s", "1.05x", ">= 1.0x", "yes"]
    assert row(report, "new connections at c=50 (ab), rate, the relays on a core")[1:] == [
        "1100 req/s", "1000 req/s", "1.10x", ">= 0.9x", "yes"]
    assert row(report, "new connections at c=50 (ab), median, the relays on a core")[1:] == [
        "45.00 ms", "42.00 ms", "+3.00 ms", "<= +2 ms", "no"]
    assert row(report, "`ab -c50 -n5000`, a new connection per request, the relays on a core "
                       "of their own")[1:3] == ["slurm-persist", "1100"]
    assert row(report, "`wrk -c50 -t2 -d20s`, keep-alive, the relays on a core of their own")[
        1:3] == ["slurm-persist", "3150"]
    assert "relays on a core" not in table(RESULTS)
    assert ("With the relays on a core of their own, threads the kernel would not move: "
            "iou-wrk-7.") in table({**pinned, "pinned_unmovable": ["iou-wrk-7"]})
    skipped = table({**RESULTS, "pinned_skipped": "needs CPUs 0 and 1; this process may use [0]"})
    assert ("No run with the relays on a core of their own: needs CPUs 0 and 1; this process "
            "may use [0].") in skipped
