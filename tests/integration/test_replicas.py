"""Replicas on the sandbox: two chains side by side, their first jobs
staggered and on different nodes, new connections spread over both, one
chain per slot, and the service up while one replica waits in a busy queue."""

from __future__ import annotations

import http.client
import json
import shutil
import time

import pytest

from helpers import HPC, Load, answers, cli, get, site_args, wait_for

pytestmark = pytest.mark.cluster


def slots(alice, name: str, reasons: dict | None = None) -> dict[str, list[tuple]]:
    """Per job name of the service: (job, state, node, limit) of each job;
    reasons, if given, gets each job's pending reason."""
    rows = [line.split("|") for line in
            alice.out("squeue -h -u alice -o '%i|%j|%T|%N|%l|%r'").splitlines()]
    found: dict[str, list[tuple]] = {}
    for job, job_name, state, node, limit, reason in rows:
        if job_name.startswith(f"sp-{name}"):
            found.setdefault(job_name, []).append((job, state, node, limit))
            if reasons is not None:
                reasons[f"{job_name}:{job}"] = reason
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
    both = wait_for("both slots running", lambda: r if len(r := running(alice, "rep")) == 2
                    else None, timeout=120)
    first, second = both["sp-rep"], both["sp-rep+1"]
    print(f"replicas: slot0={first} slot1={second}")
    # Rollovers half a limit apart: slot 1 asks for 5 minutes (the scheduler
    # may give less, down to its --time-min, when that starts it sooner).
    assert first[3] == "10:00" and int(second[3].split(":")[0]) <= 5, (first, second)
    assert first[2] != second[2]  # the sandbox's two nodes were idle: one each
    wait_for("both replicas answering", lambda: len(answered_by(up.port)) == 2, timeout=60)
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


@pytest.mark.slow
@pytest.mark.waits
def test_a_busy_queue_empties_one_replica_not_two(start_up, cluster, alice, mallory):
    """Another user's jobs fill the nodes and outrank ours (scontrol sets
    their priority, as fair-share does for a service running 24/7): each
    service's first rollover waits in the queue until they are cancelled,
    two minutes later. The one-replica service is down meanwhile; the
    two-replica one, whose other slot rolls over minutes later, serves every
    request."""
    two = start_up("busy2", "--replicas", "2", "--sbatch-option=--time=10")
    one = start_up("busy1", "--sbatch-option=--time=4")
    two.wait_serving()
    one.wait_serving()
    wait_for("both of busy2's slots answering", lambda: len(answered_by(two.port)) == 2,
             timeout=120)
    idle = int(alice.out("sinfo -h -o %C").split("/")[1])
    fill = "sbatch --parsable -J bob-fill --wrap 'sleep 900'"
    bob = [mallory.out(fill) for _ in range(idle + 6)]
    # priority/basic counts down from 4294901759 in submission order: above that.
    for job in bob:
        cluster.exec("slurmctld", "scontrol", "update", f"JobId={job}", "Priority=4294967000")
    t0 = time.time()
    waits: dict[str, float] = {}
    try:
        with Load(two.port, every=0.05, timeout=150) as load2, \
                Load(one.port, every=0.05, timeout=150) as load1:
            # Until busy2's slot 1 (5 minutes, its warning 90 s before) has
            # waited two minutes for its successor.
            while time.time() - t0 < 420 and not any(
                    k.startswith("sp-busy2+1:") and time.time() - v >= 120
                    for k, v in waits.items()):
                reasons: dict[str, str] = {}
                slots(alice, "busy", reasons)
                for job, reason in reasons.items():
                    if reason in ("Priority", "Resources"):  # eligible, and the queue is full
                        waits.setdefault(job, time.time())
                time.sleep(5)
            mallory.run("scancel -u mallory")
            released = time.time()
            time.sleep(30)
    finally:
        mallory.run("scancel -u mallory", check=False)
    waited = {k: round(released - v) for k, v in waits.items()}
    gap1 = load1.outage_after(t0)
    print(f"busy queue: waited in the queue (s) {waited}; replicas=2 requests "
          f"{len(load2.results)} failed {len(load2.failures())} "
          f"longest {load2.outage_after(t0):.1f}s; "
          f"replicas=1 requests {len(load1.results)} failed {len(load1.failures())} "
          f"longest {gap1:.1f}s")
    assert any(k.startswith("sp-busy2+1:") and v >= 110 for k, v in waited.items()), waited
    assert any(k.startswith("sp-busy1:") and v >= 60 for k, v in waited.items()), waited
    assert not load2.failures()
    assert gap1 >= 60 or load1.failures()  # the premise: one replica alone was down
    one_chain_per_slot(alice, "busy2")


def test_rollout_moves_every_slot_to_the_new_code_without_a_failed_request(
        start_up, cluster, alice, tmp_path):
    app = tmp_path / "hpc"
    shutil.copytree(HPC, app, ignore=shutil.ignore_patterns("__pycache__"))
    up = start_up("roll", "--replicas", "2", "--local-hpc-script-dir", str(app))
    up.wait_serving()
    wait_for("both slots running", lambda: len(running(alice, "roll")) == 2, timeout=120)
    before = {job for jobs in slots(alice, "roll").values() for job, *_ in jobs}
    old_hash = app_hashes(cluster, up)
    with (app / "hpc.py").open("a") as code:
        code.write("\n# version 2\n")
    with Load(up.port, every=0.05, timeout=120) as load:
        done = cli("rollout", *site_args(cluster, "roll"), "--replicas", "2",
                   "--local-hpc-script-dir", str(app), timeout=600)
        ended = time.time()
        time.sleep(5)
    print(done.stdout, done.stderr[-2000:])
    assert done.returncode == 0, done.stderr
    after = [r for r in load.results if r[0] >= ended]
    now = {job for jobs in slots(alice, "roll").values() for job, *_ in jobs}
    new_hash = app_hashes(cluster, up)
    print(f"rollout: requests {len(load.results)} failed {len(load.failures())}; jobs before "
          f"{sorted(before)} after {sorted(now)}; answered after the end by {load_jobs(after)}; "
          f"app {old_hash} -> {new_hash}")
    assert not load.failures() and after
    assert not before & now  # every old job is gone, pending successors included
    assert not before & set(load_jobs(after))
    assert len(old_hash) == len(new_hash) == 1 and old_hash != new_hash
    one_chain_per_slot(alice, "roll")


CRASH = '''

async def crash(request: web.Request) -> web.Response:
    """Test only: the server dies on this request, its body unread."""
    name = os.environ["SLURM_PERSIST_SERVICE"]
    with open(os.path.expanduser(f"~/crash-hits-{name}"), "a") as hits:
        hits.write(os.environ["SLURM_JOB_ID"] + "\\n")
    os._exit(1)
'''


def test_a_request_that_crashes_a_replica_runs_once_not_on_both(start_up, alice, tmp_path):
    """The server takes the request and dies with its body unread (a reset):
    the gate had passed the request on, so it acknowledges it all the same,
    and the forwarder hands the close to the client instead of sending the
    request to the other replica, which would crash as well."""
    app = tmp_path / "hpc"
    shutil.copytree(HPC, app, ignore=shutil.ignore_patterns("__pycache__"))
    code = (app / "hpc.py").read_text()
    assert 'web.post("/upload", upload)])' in code
    code = code.replace('web.post("/upload", upload)])',
                        'web.post("/upload", upload), web.post("/crash", crash)])')
    code = code.replace("\ndef app()", CRASH + "\n\ndef app()")
    (app / "hpc.py").write_text(code)
    alice.run("rm -f ~/crash-hits-crash")
    up = start_up("crash", "--replicas", "2", "--local-hpc-script-dir", str(app))
    up.wait_serving()
    wait_for("both replicas answering", lambda: len(answered_by(up.port)) == 2, timeout=120)
    with pytest.raises((OSError, http.client.HTTPException)):
        get(up.port, "/crash", data=b"x" * (256 << 10), timeout=60)
    hits = alice.out("cat ~/crash-hits-crash").split()
    print(f"crash: the request reached {hits}")
    assert len(hits) == 1
    assert answers(up.port)  # the other replica serves on


def app_hashes(cluster, up) -> set[str]:
    report = json.loads(cli("status", *site_args(cluster, up.name), "--json").stdout)
    return {job["app"] for job in report["jobs"] if job["state"] == "RUNNING"}


def load_jobs(results) -> list[str]:
    return sorted({job for _, _, job, _ in results if job})


def answered_by(port: int) -> set[str]:
    with Load(port, every=0.05) as load:
        time.sleep(1)
    return set(load.jobs())
