"""The load tools' output, as ab 2.3 and wrk 4.1.0 (Debian bookworm) printed
it against the example server (tests/unit/bench_output/, captured by hand)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import tools

OUT = Path(__file__).parent / "bench_output"


def read(name: str) -> str:
    return (OUT / name).read_text()


def test_ab_percentiles_from_its_table_in_whole_ms():
    row = tools.parse_ab(read("ab_c50.txt"))
    assert row == {"req_per_s": 3227.43, "p50_ms": 14.0, "p99_ms": 29.0, "requests": 2000,
                   "failed": 0}


def test_ab_percentiles_from_its_csv_with_decimals():
    row = tools.parse_ab(read("ab_c10_e.txt"), read("ab_c10_e.csv"))
    assert row["p50_ms"] == 3.316 and row["p99_ms"] == 12.073
    assert row["req_per_s"] == 2487.36 and row["requests"] == 300 and row["failed"] == 0


def test_ab_non_2xx_answers_count_as_failed():
    text = read("ab_c50.txt").replace("Failed requests:        0\n",
                                      "Failed requests:        0\nNon-2xx responses:      50\n")
    assert tools.parse_ab(text)["failed"] == 50


def test_wrk_rate_and_latency_distribution():
    row = tools.parse_wrk(read("wrk_c50.txt"))
    assert row == {"req_per_s": 9940.31, "p50_ms": 4.59, "p99_ms": 13.70, "requests": 29935,
                   "failed": 0}


def test_wrk_microseconds_are_converted_to_ms():
    row = tools.parse_wrk(read("wrk_us.txt"))
    assert row["p50_ms"] == pytest.approx(0.096) and row["p99_ms"] == 7.69


def test_wrk_socket_errors_and_non_2xx_count_as_failed():
    assert tools.parse_wrk(read("wrk_timeouts.txt"))["failed"] == 7
    assert tools.parse_wrk(read("wrk_404.txt"))["failed"] == 13019
    assert tools.parse_wrk(read("wrk_timeouts.txt"))["p50_ms"] == 601.83


def test_output_without_percentiles_is_an_error_not_a_zero():
    with pytest.raises(ValueError):
        tools.parse_wrk(read("wrk_c50.txt").split("  Latency Distribution")[0])
    with pytest.raises(ValueError):
        tools.parse_ab(read("ab_c50.txt").split("Percentage of the requests")[0])


def test_a_missing_tool_is_one_line_naming_its_package(monkeypatch):
    monkeypatch.setattr(tools.shutil, "which", lambda name: None)
    with pytest.raises(tools.ToolMissing) as missing:
        tools.require("ab")
    assert "apache2-utils" in str(missing.value) and "\n" not in str(missing.value)
