"""Another cluster user, mallory, cannot reach or read alice's service."""

from __future__ import annotations

import shlex

import pytest

from helpers import gate_get, serving, wait_for

pytestmark = pytest.mark.cluster

# Run by mallory inside a job on alice's node: every way in she can try.
PROBE = r"""
import glob, os, socket, subprocess
def get(connect):
    try:
        s = connect()
        s.settimeout(3)
        s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        return s.recv(100).split(b"\r\n")[0].decode() or "closed"
    except OSError as exc:
        return type(exc).__name__
ports = set()
for line in subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout.splitlines():
    ports.add(int(line.split()[3].rsplit(":", 1)[1]))
for port in sorted(ports):
    for host in ("127.0.0.1", socket.gethostname()):
        print("tcp", host, port, get(lambda: socket.create_connection((host, port), 3)))
for path in [d + name for d in glob.glob("/tmp/slurm-persist-*")
             for name in ("/server-0.sock", "/gate.sock")]:
    def unix():
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        return s
    print("unix", path, get(unix))
"""


@pytest.mark.parametrize("mode", ["direct", "reverse"])
def test_mallory_on_the_same_node_cannot_reach_the_server(make_service, alice, mallory, mode):
    chain = make_service(f"guarded-{mode}", mode=mode)
    job_id, _ = chain.ensure()
    record = wait_for("a serving record", lambda: serving(chain, job_id))
    script = f"/home/mallory/probe-{job_id}.py"
    mallory.run(f"cat > {script} <<'EOF'\n{PROBE}\nEOF")
    job = mallory.out(f"sbatch --parsable --nodelist={record.node} --output={script}.out "
                      f"--wrap {shlex.quote(f'python3 {script}')}")
    wait_for("mallory's probe", lambda: mallory.run(f"squeue -h -j {job}", check=False)
             .stdout.strip() == "", timeout=60)
    report = mallory.out(f"cat {script}.out")
    tried = [line for line in report.splitlines() if line.startswith(("tcp", "unix"))]
    if mode == "direct":
        assert any(str(record.port) in line for line in tried), report  # she did find the gate
    assert not any("200" in line for line in tried), report
    assert "unix" in report and "PermissionError" in report, report
    assert "200 OK" in gate_get(alice, record)


def test_mallory_cannot_read_records(make_service, mallory):
    chain = make_service("secret")
    job_id, _ = chain.ensure()
    wait_for("a serving record", lambda: serving(chain, job_id))
    record_path = f"{chain.layout.service_dir}/endpoints/{job_id}.json"
    result = mallory.run(f"cat {record_path}", check=False)
    assert result.returncode != 0 and "Permission denied" in result.stderr
    modes = chain.site.run(["stat", "-c", "%a %n", chain.layout.home + "/.slurm-persist",
                            chain.layout.service_dir, record_path,
                            chain.layout.service_dir + "/spec.json"]).stdout.split("\n")
    assert [m.split()[0] for m in modes if m] == ["700", "700", "600", "600"]


def test_agent_refuses_a_service_dir_others_can_write(make_service, alice):
    chain = make_service("loose")
    alice.run(f"chmod 777 {chain.layout.service_dir}")
    job_id, _ = chain.ensure()
    wait_for("the job to end", lambda: chain.jobs() == [], timeout=60)
    log = alice.out(f"cat {chain.log_path(job_id)}")
    assert "state=refused" in log and "can be written by others (mode 777)" in log
    with pytest.raises(RuntimeError, match="refusing the service dir"):
        chain.snapshot()
    alice.run(f"chmod 700 {chain.layout.service_dir}")  # so cleanup can stop the chain


def test_a_record_others_can_write_is_not_trusted(make_service, alice):
    chain = make_service("loose-record")
    job_id, _ = chain.ensure()
    wait_for("a serving record", lambda: serving(chain, job_id))
    alice.run(f"chmod 666 {chain.layout.service_dir}/endpoints/{job_id}.json")
    snap = chain.snapshot()
    assert job_id not in snap.endpoints
    assert "can be written by others (mode 666)" in snap.errors[job_id]
    assert serving(chain) is None  # the laptop would not route to it


UNIX_GET = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
    s.sendall(b"GET /health HTTP/1.0\\r\\n\\r\\n")
    print(s.recv(100) or "closed")
except OSError as exc:
    print(type(exc).__name__)
"""


def test_reverse_mode_socket_and_key_are_alices_alone(make_service, alice, mallory):
    chain = make_service("hidden", mode="reverse")
    job_id, _ = chain.ensure()
    record = wait_for("a serving record", lambda: serving(chain, job_id))
    get = f"python3 -c {shlex.quote(UNIX_GET)} {shlex.quote(record.socket)}"
    assert mallory.out(get, host=record.login_node) == "PermissionError"
    sockets = chain.layout.service_dir + "/sockets"
    assert alice.out(f"stat -c %a {sockets}") == "700"
    assert "200 OK" in gate_get(alice, record)

    # The job's key gets forwarding only: the command asked for never runs,
    # the forced one reads stdin away (a refused host key or login is 255).
    reverse = chain.layout.reverse_dir
    tried = alice.run(f"ssh -F /dev/null -i {reverse}/id_ed25519 -o IdentitiesOnly=yes "
                      f"-o BatchMode=yes -o UserKnownHostsFile={reverse}/known_hosts "
                      f"-o StrictHostKeyChecking=yes login1 id </dev/null", host=record.node,
                      check=False)
    assert (tried.returncode, tried.stdout) == (0, ""), tried.stderr
    assert alice.out(f"stat -c %a {reverse} {reverse}/id_ed25519").split() == ["700", "600"]

    make_service("hidden-again", mode="reverse")  # a second deploy adds no second line
    keys = [line for line in alice.out("cat ~/.ssh/authorized_keys").splitlines()
            if "slurm-persist reverse mode" in line]
    forced = 'restrict,port-forwarding,command="cat >/dev/null" '
    assert len(keys) == 1 and keys[0].startswith(forced)
