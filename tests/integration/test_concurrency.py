"""Exactly one chain and one forwarder, however many `up` start at once."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import BIN, answers, cli, free_port, site_args, up_args, wait_for

pytestmark = pytest.mark.cluster


def test_five_concurrent_ups_from_two_state_folders(cluster, tmp_path):
    """As two laptops (or two terminals and a script) would: five `up` of
    one service in the same second, on one port, from two state folders."""
    name, port = "race", free_port()
    folders = []
    for tag in "ab":
        # Short: ssh's control sockets live there, and sun_path holds 108 bytes.
        state, runtime = tmp_path / f"state-{tag}", Path(tempfile.mkdtemp(prefix=f"spr{tag}-"))
        folders.append({**os.environ, "XDG_STATE_HOME": str(state),
                        "XDG_RUNTIME_DIR": str(runtime)})
    procs = []
    for i in range(5):
        log = tmp_path / f"up-{i}.log"
        procs.append((subprocess.Popen([BIN, *up_args(cluster, name, port)], env=folders[i % 2],
                                       stdout=log.open("w"), stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL), log, folders[i % 2]))
    try:
        wait_for(f"{name} on 127.0.0.1:{port}", lambda: answers(port), timeout=180)
        wait_for("the other four to end", lambda: sum(p.poll() is None for p, *_ in procs) == 1,
                 timeout=120)
        logs = [log.read_text() for _, log, _ in procs]
        winner = next(env for p, _, env in procs if p.poll() is None)
        jobs = cluster.exec("slurmctld", "squeue", "-h", "-n", f"sp-{name}", "-o", "%T").split()
        started = sum(text.count("state=chain-started") for text in logs)
        print(f"race: alive=1 started={started} jobs={sorted(jobs)} exits="
              f"{[p.returncode for p, *_ in procs]}")
        for text in logs:
            assert "Traceback" not in text, text
        assert started == 1 and sorted(jobs) == ["PENDING", "RUNNING"]
        status = subprocess.run([BIN, "status", *site_args(cluster, name)], env=winner,
                                capture_output=True, text=True, timeout=120)
        assert "serving" in status.stdout and "not running" not in status.stdout, status.stdout
        down = subprocess.run([BIN, "down", *site_args(cluster, name)], env=winner,
                              capture_output=True, text=True, timeout=120)
        assert "forwarder pid" in down.stdout and "stopped" in down.stdout, down.stdout
        assert "cancelled jobs" in down.stdout
    finally:
        for p, *_ in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                p.wait(timeout=30)
        cli("down", *site_args(cluster, name))
