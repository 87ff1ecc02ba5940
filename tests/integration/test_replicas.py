"""Replicas on the sandbox: two chains side by side, their first jobs
staggered and on different nodes, new connections spread over both, one
chain per slot, and the service up while one replica waits in a busy queue."""

from __future__ import annotations

import time

import pytest

from helpers import Load, cli, site_args, wait_for

pytestmark = pytest.mark.cluster


def slots(alice, name: str) -> dict[str, list[tuple[str, str, str, str]]]:
    """Per job name of the service: (job, state, node, limit) of each job."""
    rows = [line.split("|") for line in
            alice.out("squeue -h -u alice -o '%i|%j|%T|%N|%l'").splitlines()]
    found: dict[str, list[tuple[str, str, str, str]]] = {}
    for job, job_name, state, node, limit in rows:
        if job_name in (f"sp-{name}", f"sp-{name}+1"):
            found.setdefault(job_name, []).append((job, state, node, limit))
    return found


def running(alice, name: str) -> dict[str, tuple[str, str, str, str]]:
    return {slot: next(j for j in jobs if j[1] == "RUNNING")
            for slot, jobs in slots(alice, name).items() if any(j[1] == "RUNNING" for j in jobs)}


def one_chain_per_slot(alice, name: str) -> None:
    wait_for("one running job and one queued successor per slot", lambda: all(
        sorted(j[1] for j in jobs) == ["PENDING", "RUNNING"]
        for jobs in slots(alice, name).values()) and len(slots(alice, name)) == 2, timeout=120)


def test_two_replicas_share_the_load_on_two_nodes_and_roll_over_apart(start_up, cluster, alice):
    up = start_up("rep", "--replicas", "2", "--sbatch-option=--time=10")
    up.wait_serving()
    both = wait_for("both slots running", lambda: (r := running(alice, "rep")) if len(r) == 2
                    else None, timeout=120)
    first, second = both["sp-rep"], both["sp-rep+1"]
    print(f"replicas: slot0={first} slot1={second}")
    assert first[3] == "10:00" and second[3] == "5:00"  # rollovers half a limit apart
    assert first[2] != second[2]  # the sandbox's two nodes were idle: one each
    with Load(up.port, every=0.05) as load:
        time.sleep(8)
    served = {job: sum(1 for r in load.results if r[2] == job) for job in load.jobs()}
    print(f"replicas: answers per job {served}, failed {len(load.failures())}")
    assert not load.failures() and set(served) == {first[0], second[0]}
    status = cli("status", *site_args(cluster, "rep"), "--local-port", str(up.port)).stdout
    print(status)
    assert f"slot 0: {first[0]}:RUNNING" in status and f"slot 1: {second[0]}:RUNNING" in status
    assert ", app " in status
    one_chain_per_slot(alice, "rep")
