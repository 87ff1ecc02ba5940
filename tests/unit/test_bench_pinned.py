"""The relays on a core of their own (bench/pinned.py), on real processes:
stand-ins named as the benchmark's roles are, and only they are moved."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.pinned import RELAY_CPU, SHARED_CPU, CannotPin, Pinned
from bench.procs import command
from helpers import wait_for

pytestmark = pytest.mark.skipif(not {SHARED_CPU, RELAY_CPU} <= os.sched_getaffinity(0),
                                reason="needs CPUs 0 and 1")
ROOT = Path(__file__).resolve().parents[2]


def named(name: str) -> subprocess.Popen:
    """`sleep 60` whose command line reads as name: once it can be read,
    which is a moment after Popen returns (the exec is still setting up)."""
    proc = subprocess.Popen([name, "60"], executable="sleep")
    wait_for(f"{name}'s command line", lambda: command(proc.pid), timeout=10, every=0.01)
    return proc


def end(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


def test_relays_on_one_cpu_the_rest_on_the_other_then_every_thread_as_it_was():
    everything = os.sched_getaffinity(0)
    sshd, forwarder = named("sshd: alice@notty"), named("python slurm-persist up")
    agent, slurmd = named("python3 -m remote_agent job /home/alice/x"), named("slurmd -D")
    own = named("ssh -W login1:22 jump")  # pinned by someone else beforehand
    os.sched_setaffinity(own.pid, {RELAY_CPU})
    there = named("munged")  # pinned by someone else, on the CPU it gets here
    os.sched_setaffinity(there.pid, {SHARED_CPU})
    stand_ins = [sshd, forwarder, agent, slurmd, own, there]
    watched = [each.pid for each in stand_ins]
    try:
        with Pinned(forwarder.pid, among=lambda: list(watched)):
            assert os.sched_getaffinity(sshd.pid) == {SHARED_CPU}
            assert os.sched_getaffinity(forwarder.pid) == {RELAY_CPU}
            assert os.sched_getaffinity(agent.pid) == {RELAY_CPU}
            assert os.sched_getaffinity(slurmd.pid) == {SHARED_CPU}  # every other process
            assert os.sched_getaffinity(own.pid) == {SHARED_CPU}
            assert os.sched_getaffinity(0) == {SHARED_CPU}  # and so the load tool it starts
            born = subprocess.Popen(["sleep", "60"])  # inherits the pinned CPU
            stand_ins.append(born)
            watched.append(born.pid)
            assert os.sched_getaffinity(born.pid) == {SHARED_CPU}
        assert os.sched_getaffinity(own.pid) == {RELAY_CPU}  # as it was, not all CPUs
        assert os.sched_getaffinity(there.pid) == {SHARED_CPU}
        for pid in [0, sshd.pid, forwarder.pid, agent.pid, slurmd.pid, born.pid]:
            assert os.sched_getaffinity(pid) == everything
    finally:
        end(stand_ins)


def test_a_child_forked_of_a_pinned_relay_while_pinning_goes_back_to_all_cpus():
    everything = os.sched_getaffinity(0)
    forwarder, agent = named("python slurm-persist up"), named("python3 -m remote_agent job /x")
    stand_ins = [forwarder, agent]
    calls = 0

    def among() -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 3:  # the first pass has pinned the forwarder: its child starts on CPU 1
            stand_ins.append(subprocess.Popen(
                ["ssh -S c0 -O check login1", "60"], executable="sleep",
                preexec_fn=lambda: os.sched_setaffinity(0, {RELAY_CPU})))
        return [each.pid for each in stand_ins]

    try:
        with Pinned(forwarder.pid, among=among):
            assert os.sched_getaffinity(stand_ins[2].pid) == {SHARED_CPU}  # ssh: the path's
        assert [os.sched_getaffinity(each.pid) for each in stand_ins] == [everything] * 3
    finally:
        end(stand_ins)


@pytest.mark.skipif(signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL,
                    reason="SIGTERM is handled here already")
def test_a_sigterm_while_putting_back_waits_for_the_end_then_ends_the_run():
    everything = os.sched_getaffinity(0)
    forwarder, agent = named("python slurm-persist up"), named("python3 -m remote_agent job /x")
    sshd = named("sshd: alice@notty")
    stand_ins = [forwarder, agent, sshd]
    phase = ["pinning"]

    def among() -> list[int]:
        if phase[0] == "putting back":  # __exit__'s first look
            phase[0] = "signalled"
            os.kill(os.getpid(), signal.SIGTERM)
        return [each.pid for each in stand_ins]

    try:
        with pytest.raises(SystemExit) as ended:
            with Pinned(forwarder.pid, among=among):
                phase[0] = "putting back"
        assert ended.value.code == 128 + signal.SIGTERM
        assert [os.sched_getaffinity(each.pid) for each in stand_ins] == [everything] * 3
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        end(stand_ins)


def test_every_thread_of_a_relay_is_pinned_not_only_its_first():
    code = "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start()"
    forwarder = subprocess.Popen([sys.executable, "-c", code])
    agent = named("python3 -m remote_agent job /home/alice/x")
    try:
        wait_for("the second thread", lambda: len(os.listdir(f"/proc/{forwarder.pid}/task")) == 2,
                 timeout=10, every=0.05)
        with Pinned(forwarder.pid, among=lambda: [forwarder.pid, agent.pid]):
            tids = os.listdir(f"/proc/{forwarder.pid}/task")
            assert [os.sched_getaffinity(int(tid)) for tid in tids] == [{RELAY_CPU}] * 2
    finally:
        end([forwarder, agent])


def test_no_relay_found_is_said_and_nothing_stays_pinned():
    everything = os.sched_getaffinity(0)
    sshd = named("sshd: alice@notty")
    try:
        with pytest.raises(CannotPin, match="found no forwarder and no gate"):
            with Pinned(12345678, among=lambda: [sshd.pid]):
                pass
        assert os.sched_getaffinity(sshd.pid) == os.sched_getaffinity(0) == everything
    finally:
        end([sshd])


def test_a_sigterm_inside_the_run_puts_every_thread_back_first():
    everything = os.sched_getaffinity(0)
    sshd, forwarder = named("sshd: alice@notty"), named("python slurm-persist up")
    agent = named("python3 -m remote_agent job /home/alice/x")
    stand_ins = [sshd, forwarder, agent]
    code = ("import sys, time; from bench.pinned import Pinned\n"
            "with Pinned(int(sys.argv[2]), among=lambda: [int(p) for p in sys.argv[1:]]):\n"
            "    print('pinned', flush=True); time.sleep(60)\n")
    bench = subprocess.Popen([sys.executable, "-c", code, *(str(each.pid) for each in stand_ins)],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert bench.stdout is not None
        assert select.select([bench.stdout], [], [], 30)[0], "the run did not start in 30 s"
        assert bench.stdout.readline() == "pinned\n"
        assert os.sched_getaffinity(sshd.pid) == {SHARED_CPU}
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=30) == 128 + signal.SIGTERM
        assert [os.sched_getaffinity(each.pid) for each in stand_ins] == [everything] * 3
    finally:
        bench.kill()
        bench.wait()
        end(stand_ins)
