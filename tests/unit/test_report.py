"""What status says of each job, from SLURM's fields and the records."""

from __future__ import annotations

import json
import time

from local.report import JobLine, Report
from remote_agent.slurm import Job

NOW = time.mktime(time.strptime("2026-11-25T10:00:00", "%Y-%m-%dT%H:%M:%S"))


def test_a_running_job_says_time_left_and_next_rollover():
    job = Job("22", "sp-x", "RUNNING", "node1", "None", "1:00:00", "2026-11-25T10:30:00",
              "2026-11-25T09:30:00")
    line = JobLine.of(job, None, overlap_minutes=10, warn_seconds=90)
    text = line.describe(NOW)
    assert "22:RUNNING on node1" in text and "0h30m00s left" in text
    assert "next rollover 2026-11-25 10:20:00 (in 0h20m00s)" in text
    no_overlap = JobLine.of(job, None, overlap_minutes=0, warn_seconds=90).describe(NOW)
    assert "next rollover 2026-11-25 10:28:30" in no_overlap


def test_a_waiting_successor_says_why_and_when_slurm_expects_it():
    job = Job("23", "sp-x", "PENDING", "", "Priority", "1:00:00", "N/A", "2026-11-25T11:10:00")
    text = JobLine.of(job, None, 0, 90).describe(NOW)
    assert text == "23:PENDING, waiting: Priority, SLURM expects it to start 2026-11-25 11:10:00"
    unknown = Job("24", "sp-x", "PENDING", "", "Dependency", "1:00:00", "N/A", "N/A")
    assert JobLine.of(unknown, None, 0, 90).describe(NOW) == "24:PENDING, waiting: Dependency"


def test_text_keeps_key_value_lines_and_json_parses():
    report = Report("x", "22:RUNNING 23:PENDING", jobs=[
        JobLine("22", "RUNNING", "node1", "serving"), JobLine("23", "PENDING", reason="Priority")])
    lines = report.text(NOW).splitlines()
    assert all(len(line.split(None, 1)) == 2 for line in lines)
    assert lines[-2].split(None, 1) == ["jobs", "22:RUNNING on node1, serving"]
    assert lines[-1].split() == ["23:PENDING,", "waiting:", "Priority"]
    data = json.loads(report.json())
    assert data["url"] == "-" and data["jobs"][1]["reason"] == "Priority"


def test_the_url_is_the_running_forwarders_port_not_the_default():
    from local.config import Options
    from local.report import local_url
    from local.status_file import Status
    running = Status(pid=1, service="x", local_port=55249)
    assert local_url(Options(name="x"), running) == "http://127.0.0.1:55249/"
    assert local_url(Options(name="x"), None) == "http://127.0.0.1:8642/"
