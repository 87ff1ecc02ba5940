"""The sandbox site behaves like a real SLURM cluster, reached as alice
through the jumphost only."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from helpers import wait_for
from local.sandbox import COMPUTE_NODES, LOGIN_NODES

pytestmark = pytest.mark.cluster


def job_state(alice, job: str) -> tuple[str, str]:
    """(state, node) from scontrol, which still knows ended jobs (MinJobAge)."""
    out = alice.out(f"scontrol show job -o {job}")
    fields = dict(re.findall(r"(\w+)=(\S*)", out))
    return fields["JobState"], fields.get("NodeList", "")


def sbatch(alice, *args: str) -> str:
    return alice.out("sbatch --parsable " + " ".join(args)).split(";")[0]


@pytest.fixture(autouse=True)
def no_jobs_left(alice):
    yield
    alice.run("scancel -u alice", check=False)


def test_job_runs_on_a_compute_node(alice):
    job = sbatch(alice, "--wrap 'sleep 60'")
    state, node = wait_for("RUNNING", lambda: (s := job_state(alice, job))[0] == "RUNNING" and s)
    assert node in COMPUTE_NODES
    squeue = alice.out(f"squeue -h -j {job} -o '%T %N %u'")
    assert squeue == f"RUNNING {node} alice"


def test_dependent_job_starts_after_its_predecessor_ends(alice):
    first = sbatch(alice, "--wrap 'sleep 8'")
    second = sbatch(alice, f"--dependency=afterany:{first}", "--wrap 'sleep 1'")
    wait_for("first RUNNING", lambda: job_state(alice, first)[0] == "RUNNING")
    reason = alice.out(f"squeue -h -j {second} -o '%T %r'")
    assert reason == "PENDING Dependency"
    wait_for("second COMPLETED", lambda: job_state(alice, second)[0] == "COMPLETED", timeout=120)
    times = {}
    for job in (first, second):
        out = alice.out(f"scontrol show job -o {job}")
        times[job] = dict(re.findall(r"(StartTime|EndTime)=(\S+)", out))
    assert times[second]["StartTime"] >= times[first]["EndTime"]


def test_scancel_ends_a_running_job(alice):
    job = sbatch(alice, "--wrap 'sleep 300'")
    wait_for("RUNNING", lambda: job_state(alice, job)[0] == "RUNNING")
    alice.run(f"scancel {job}")
    wait_for("CANCELLED", lambda: job_state(alice, job)[0] == "CANCELLED", timeout=30)
    assert alice.out(f"squeue -h -j {job} -t all -o %T") in ("", "CANCELLED")


def test_login_node_reaches_a_port_opened_by_a_job(alice):
    job = sbatch(alice, "--wrap 'python3 -m http.server 48123 --bind 0.0.0.0 --directory /etc'")
    _, node = wait_for("RUNNING", lambda: (s := job_state(alice, job))[0] == "RUNNING" and s)
    body = wait_for("the job's port answering", lambda: alice.run(
        f"curl -sf http://{node}:48123/hostname", check=False).stdout)
    assert body.strip() == node


def test_jobs_see_the_shared_home(alice):
    job = sbatch(alice, "--output=/home/alice/shared-home-%j.out", "--wrap 'hostname'")
    wait_for("COMPLETED", lambda: job_state(alice, job)[0] == "COMPLETED")
    _, node = job_state(alice, job)
    for login in LOGIN_NODES:
        assert alice.out(f"cat ~/shared-home-{job}.out", host=login) == node


def test_only_the_jumphost_is_published(cluster, alice):
    for service in LOGIN_NODES + COMPUTE_NODES + ("slurmctld",):
        ports = subprocess.run(["docker", "port", cluster.container(service)],
                               capture_output=True, text=True, check=True).stdout
        assert ports.strip() == "", f"{service} publishes {ports}"
    published = subprocess.run(["docker", "port", cluster.container("jumphost")],
                               capture_output=True, text=True, check=True).stdout
    assert re.fullmatch(r"22/tcp -> 127\.0\.0\.1:\d+\s*", published)


def test_login_nodes_see_ssh_only_from_the_jumphost(cluster, alice):
    """Users come in through the jumphost; the only other logins are
    reverse-mode jobs on compute nodes, and those only with their own key."""
    for login in LOGIN_NODES:
        alice.out("true", host=login)
    jump_ip = container_ip(cluster, "jumphost")
    node_ips = {container_ip(cluster, node) for node in COMPUTE_NODES}
    reverse_key = alice.run("ssh-keygen -lf ~/.slurm-persist/reverse/id_ed25519.pub",
                            check=False).stdout.split()[1:2]
    for login in LOGIN_NODES:
        logs = subprocess.run(["docker", "logs", cluster.container(login)],
                              capture_output=True, text=True).stderr
        accepted = set(re.findall(r"Accepted publickey for \w+ from (\S+) port \d+ ssh2: \S+ (\S+)",
                                  logs))
        assert jump_ip in {ip for ip, _ in accepted}
        others = {(ip, key) for ip, key in accepted if ip != jump_ip}
        assert all(ip in node_ips and [key] == reverse_key for ip, key in others), \
            f"{login} accepted SSH from {others}"


def container_ip(cluster, service: str) -> str:
    out = subprocess.run(["docker", "inspect", cluster.container(service)],
                         capture_output=True, text=True, check=True).stdout
    networks = json.loads(out)[0]["NetworkSettings"]["Networks"]
    return networks[f"{cluster.project}_cluster"]["IPAddress"]
