"""The benchmark still runs (short mode): every figure is produced. How
fast is for `invoke bench` to report, not for a test to assert."""

import json

import pytest

from bench.bench import Bench, Settings
from bench.pinned import cannot_pin
from bench.table import table
from helpers import site_options

pytestmark = pytest.mark.cluster


def test_bench_short_mode_produces_every_figure(cluster, tmp_path):
    results = Bench(site_options(cluster), cluster, Settings.short()).run()
    assert set(results["paths"]) == {
        "slurm-persist", "slurm-persist, reverse mode", "ssh -L (baseline)", "in-cluster (limit)",
    }
    for row in results["paths"].values():
        assert row["mb_per_s"] > 0 and row["p50_new_ms"] > 0 and row["p99_keepalive_ms"] > 0
        assert row["upload_mb_per_s"] > 0
    # With two CPUs and the right to pin every process, ab and wrk run again
    # with the relays on a core of their own (bench/pinned.py).
    can_pin = not cannot_pin()
    assert ("pinned_skipped" in results) is not can_pin
    tools = ("ab", "wrk", "ab-pinned", "wrk-pinned") if can_pin else ("ab", "wrk")
    for path in ("slurm-persist", "ssh -L (baseline)"):  # on both, same run
        for tool in tools:
            row = results["tools"][path][tool]
            assert row["req_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
            assert row["failed"] == 0
    warm = results["startup_warm"]
    assert warm["to_health_s"] > 0 and warm["health_to_answer_s"] is not None
    idle = results["idle_held"]  # 10,000 in full mode
    assert idle["held"] == idle["wanted"] == 200 and idle["rss_mb"] > 0
    assert results["startup_cold_s"] > 0 and results["startup_warm_s"] > 0
    assert results["recovery_scancel"]["seconds"] is not None
    assert results["forwarder"]["idle"]["rss_mb"] > 0
    assert "slurm_calls_per_hour" in results
    replicas = results["replicas"]
    assert len(replicas["1"]["jobs"]) == 1 and len(replicas["2"]["jobs"]) == 2
    assert replicas["1"]["req_per_s"] > 0 and replicas["2"]["req_per_s"] > 0
    report = table(results)
    assert report.count("\n|") >= 24
    json.dumps(results)  # what `invoke bench` writes
