"""The agent inside real SLURM jobs: endpoint records, the successor chain,
restarts and the crash-loop guard (time limits and overlap are in
tests/faults, under load). The local side only starts
the first job here; everything after that is the agents' own doing."""

from __future__ import annotations

import re
import shlex
import threading
import time

import pytest

from helpers import gate_get, serving, wait_for

pytestmark = pytest.mark.cluster

CRASH_ONCE = """#!/bin/bash
# Crash on the first start of every job, then run the example.
marker=$HOME/.crash-once-$SLURM_JOB_ID
if [ ! -e "$marker" ]; then touch "$marker"; echo "crashing on purpose" >&2; exit 3; fi
exec ./run-example
"""
NEVER_STARTS = """#!/bin/bash
echo "this server never starts" >&2
exit 3
"""


def job_field(alice, job_id: str, field: str) -> str:
    out = alice.out(f"scontrol show job -o {job_id}")
    match = re.search(rf"\b{field}=(\S*)", out)
    return match.group(1) if match else ""


class ChainWatcher:
    """Samples the queue in the background: the most jobs of the chain ever
    running at once and pending at once."""

    def __init__(self, alice, job_name: str):
        self.alice, self.job_name = alice, job_name
        self.max_running = self.max_pending = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self):
        while not self._stop.is_set():
            squeue = self.alice.run(f"squeue -h -n {self.job_name} -o %T", check=False)
            states = squeue.stdout.split()
            self.max_running = max(self.max_running, states.count("RUNNING"))
            self.max_pending = max(self.max_pending, states.count("PENDING"))
            time.sleep(0.5)


def test_job_publishes_endpoint_and_queues_one_successor(make_service, alice):
    chain = make_service("chain1")
    # 25 logs of jobs ended long ago, 1001 the oldest: each job keeps the newest 20.
    logs = shlex.quote(f"{chain.layout.service_dir}/logs")
    alice.run(f"cd {logs} && for i in $(seq 1001 1025); do "
              "touch -d \"@$((1700000000 + i))\" $i.out; done")
    job_id, created = chain.ensure()
    assert created
    record = wait_for("a serving record", lambda: serving(chain, job_id))
    assert record.node in ("node1", "node2") and record.port
    assert '"ok": true' in gate_get(alice, record)

    jobs = wait_for("a queued successor", lambda: len(chain.jobs()) == 2 and chain.jobs())
    successor = jobs[1]
    assert successor.pending and successor.reason == "Dependency"
    # The job removed the 5 oldest before it queued its successor.
    left = alice.out(f"ls {logs}").split()
    assert sorted(left) == sorted([f"{i}.out" for i in range(1006, 1026)] + [f"{job_id}.out"])
    assert job_field(alice, successor.job_id, "Dependency").startswith(f"afterany:{job_id}")
    # A second ensure finds the chain instead of starting another.
    assert chain.ensure() == (job_id, False)

    with ChainWatcher(alice, chain.options.job_name) as watch:
        alice.run(f"scancel {job_id}")
        new = wait_for("the successor serving", lambda: serving(chain, successor.job_id))
        wait_for("the next successor queued", lambda: len(chain.jobs()) == 2)
    assert '"ok": true' in gate_get(alice, new)
    assert (watch.max_running, watch.max_pending) == (1, 1)
    assert job_id not in chain.snapshot().endpoints  # the cancelled job cleaned up


def test_gate_refuses_a_wrong_secret(make_service, alice, mallory):
    chain = make_service("gated")
    job_id, _ = chain.ensure()
    record = wait_for("a serving record", lambda: serving(chain, job_id))
    assert gate_get(alice, record, secret="0" * 32) == ""
    assert gate_get(mallory, record, secret="0" * 32) == ""
    assert "200 OK" in gate_get(alice, record)


def test_crashed_server_is_restarted(make_service, faults):
    chain = make_service("crashy", run=CRASH_ONCE)
    job_id, _ = chain.ensure()
    record = wait_for("serving after one crash", lambda: serving(chain, job_id), timeout=60)
    assert record.restarts == 1
    faults.kill(record.node, "hpc.py")  # kill -9 while serving
    wait_for("serving again", lambda: (r := serving(chain, job_id)) and r.restarts == 2 and r)
    log = chain.site.run(["cat", chain.log_path(job_id)]).stdout
    assert "state=server-exited code=3 before-healthy" in log
    assert "state=server-exited code=-9" in log


def test_crash_loop_guard_stops_the_chain(make_service):
    chain = make_service("broken", run=NEVER_STARTS, max_restarts=0, crash_loop_jobs=2)
    first, _ = chain.ensure()
    wait_for("the chain to stop", lambda: chain.snapshot().chain.stopped, timeout=120)
    wait_for("no job left", lambda: chain.jobs() == [], timeout=30)
    state = chain.snapshot().chain
    assert state.failed_jobs == 2 and "crash loop" in state.reason
    log = chain.site.run(["cat", chain.log_path(first)]).stdout
    assert "state=server-exited code=3 before-healthy" in log
    assert "state=failed failed_jobs=1" in log


def test_reverse_mode_serves_on_a_login_node_and_moves_when_it_goes(make_service, alice, faults):
    chain = make_service("backward", mode="reverse")
    job_id, _ = chain.ensure()
    record = wait_for("a serving record", lambda: serving(chain, job_id))
    assert record.port is None and record.login_node == "login1"
    assert record.socket == f"{chain.layout.service_dir}/sockets/{job_id}-0.sock"
    assert '"ok": true' in gate_get(alice, record)
    # The job opened no TCP port on the node: ss shows alice her own listeners.
    assert "users:" not in alice.out("ss -Hltnp", host=record.node)

    faults.stop("login1")
    moved = wait_for("the socket on login2", lambda: (r := serving(chain, job_id))
                     and r.login_node == "login2" and r, timeout=90)
    assert moved.socket == f"{chain.layout.service_dir}/sockets/{job_id}-1.sock"
    assert '"ok": true' in gate_get(alice, moved)
    log = chain.site.run(["cat", chain.log_path(job_id)]).stdout
    assert "reverse=down login=login1" in log and "reverse=up login=login2" in log
