"""The relays on a core of their own (bench/pinned.py), on real processes:
stand-ins named as the benchmark's roles are, and only they are moved."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.pinned import RELAY_CPU, SHARED_CPU, Pinned
from helpers import wait_for


def named(name: str) -> subprocess.Popen:
    """`sleep 60` whose command line reads as name."""
    return subprocess.Popen([name, "60"], executable="sleep")


@pytest.mark.skipif(not {SHARED_CPU, RELAY_CPU} <= os.sched_getaffinity(0),
                    reason="needs CPUs 0 and 1")
def test_relays_on_one_cpu_the_rest_on_the_other_then_every_thread_as_it_was():
    everything = os.sched_getaffinity(0)
    sshd, forwarder = named("sshd: alice@notty"), named("python slurm-persist up")
    agent, slurmd = named("python3 -m remote_agent job /home/alice/x"), named("slurmd -D")
    watched = [sshd.pid, forwarder.pid, agent.pid, slurmd.pid]
    try:
        with Pinned(forwarder.pid, among=lambda: list(watched)):
            assert os.sched_getaffinity(sshd.pid) == {SHARED_CPU}
            assert os.sched_getaffinity(forwarder.pid) == {RELAY_CPU}
            assert os.sched_getaffinity(agent.pid) == {RELAY_CPU}
            assert os.sched_getaffinity(slurmd.pid) == {SHARED_CPU}  # every other process
            assert os.sched_getaffinity(0) == {SHARED_CPU}  # and so the load tool it starts
            born = subprocess.Popen(["sleep", "60"])  # inherits the pinned CPU
            watched.append(born.pid)
            assert os.sched_getaffinity(born.pid) == {SHARED_CPU}
        for pid in [0, *watched]:
            assert os.sched_getaffinity(pid) == everything
    finally:
        for pid in watched:
            os.kill(pid, 9)
            os.waitpid(pid, 0)


@pytest.mark.skipif(not {SHARED_CPU, RELAY_CPU} <= os.sched_getaffinity(0),
                    reason="needs CPUs 0 and 1")
def test_every_thread_of_a_relay_is_pinned_not_only_its_first():
    code = "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start()"
    forwarder = subprocess.Popen([sys.executable, "-c", code])
    try:
        wait_for("the second thread", lambda: len(os.listdir(f"/proc/{forwarder.pid}/task")) == 2,
                 timeout=10, every=0.05)
        with Pinned(forwarder.pid, among=lambda: [forwarder.pid]):
            tids = os.listdir(f"/proc/{forwarder.pid}/task")
            assert [os.sched_getaffinity(int(tid)) for tid in tids] == [{RELAY_CPU}] * 2
    finally:
        forwarder.kill()
        forwarder.wait()
