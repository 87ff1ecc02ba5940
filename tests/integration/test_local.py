"""The `slurm-persist` command against the docker cluster, as a user runs it:
through the jumphost, login1 first and login2 as fallback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
import pytest

from helpers import (
    BIN,
    HPC,
    answers,
    cli,
    free_port,
    get,
    site_args,
    site_options,
    ssh_masters,
    up_args,
    user_sshd,
    wait_for,
)
from local import logins, remote
from local.remote import Site
from local.sandbox import JUMP_ALIAS, JUMP_USER
from local.tunnel import Tunnel, control_socket
from local.watchdog import Watchdog

pytestmark = pytest.mark.cluster


def chain_jobs(alice, name: str) -> list[str]:
    return alice.out(f"squeue -h -n sp-{name} -o '%i:%T'").split()


@pytest.mark.parametrize("mode", ["direct", "reverse"])
def test_up_serves_get_and_post(start_up, mode):
    up = start_up(f"web-{mode}", "--mode", mode)
    up.wait_serving()
    status, body = get(up.port, "/")
    info = json.loads(body)
    assert status == 200 and info["node"] in ("node1", "node2") and info["job_id"]
    payload = os.urandom(1 << 20)
    status, echoed = get(up.port, "/echo", data=payload)
    assert status == 200 and echoed == payload


def test_fallback_login_before_up(start_up, faults):
    faults.stop("login1")
    up = start_up("fallback")
    up.wait_serving()
    assert get(up.port)[0] == 200
    assert "login=login2 state=serving" in up.log.read_text()


@pytest.mark.parametrize("mode", ["direct", "reverse"])
def test_login1_lost_while_serving(start_up, faults, mode):
    up = start_up(f"failover-{mode}", "--mode", mode)
    up.wait_serving()
    assert "login=login1 state=serving" in up.log.read_text()
    faults.stop("login1")
    wait_for("service back through login2", lambda: "login=login2 state=serving"
             in up.log.read_text() and answers(up.port), timeout=90)
    assert get(up.port, "/echo", data=b"still here") == (200, b"still here")


def test_munged_dead_on_login1_slurm_answers_from_login2(start_up, cluster, alice, faults):
    """squeue on login1 fails there alone ("Munge encode failed"): status
    and the forwarder ask login2 instead of waiting on "unknown"."""
    up = start_up("munge")
    up.wait_serving()
    jobs = wait_for("a running job and its successor", lambda: len(j := chain_jobs(
        alice, "munge")) == 2 and {state: job for job, state in (x.split(":") for x in j)})
    faults.kill_munged("login1")
    wait_for("squeue failing on login1", lambda: "Munge encode failed" in alice.run(
        "squeue -h", host="login1", check=False).stderr, timeout=20)
    status = cli("status", *site_args(cluster, "munge"))
    assert status.returncode == 0, status.stderr
    rows = dict(line.split(None, 1) for line in status.stdout.splitlines())
    # Oldest first, by number: job 99 before job 100.
    assert rows["chain"] == " ".join(f"{i}:{s}" for s, i in sorted(
        jobs.items(), key=lambda item: int(item[1]))), rows
    assert "login=login1 state=command-failed-here command=squeue" in status.stderr
    cluster.exec("slurmctld", "scancel", jobs["RUNNING"])
    served = re.compile(rf"job={jobs['PENDING']} node=\S+ login=\S+ state=serving")
    wait_for("the successor served", lambda: served.search(up.log.read_text())
             and answers(up.port), timeout=60, every=0.2)
    log = up.log.read_text()
    assert "slurm=unknown" not in log and "state=command-failed-here" in log, log


def frozen_login1(faults, action):
    """action() run with our user's sshd processes on login1 stopped
    (SIGSTOP, as when stuck on a dead filesystem; the host and its sshd
    listener up), then mended."""
    faults.freeze("login1", user_sshd("alice"))
    return then_mended(faults, action)


def then_mended(faults, action):
    """action()'s result, the faults mended after it. An action still caught
    on login1 at 120 s fails the test, and ends once they are mended."""
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(action)
        try:
            return running.result(timeout=120)
        finally:
            faults.restore()


def test_a_command_leaves_a_login_node_whose_sshd_froze(cluster, faults):
    """On a connection already open to login1, the next command goes to
    login2. paramiko waits an hour for a channel by default, and Fabric's
    command timeout starts only once the channel is open."""
    site = Site(site_options(cluster))
    try:
        assert site.run(["hostname"]).host == "login1"
        result = frozen_login1(faults, lambda: site.run(["hostname"]))
        assert (result.host, result.stdout.strip()) == ("login2", "login2")
    finally:
        site.close()


def test_an_upload_leaves_a_login_node_whose_sshd_froze(cluster, alice, faults):
    """An SFTP session already open to login1 (as in a deploy): the next
    file goes through login2, whole. (Once continued, login1's sftp-server
    still runs the open it was sent: an empty .partial-* file is left.)"""
    site = Site(site_options(cluster))
    target = "/home/alice/frozen-upload.txt"
    try:
        site.put_text("first\n", target, 0o600)
        assert site.current == "login1"
        frozen_login1(faults, lambda: site.put_text("second\n", target, 0o600))
        assert site.current == "login2"
        assert alice.out(f"cat {target}", host="login2") == "second"
    finally:
        site.close()
        alice.run(f"rm -f {target} {target}.partial-*", check=False)


def test_a_command_caught_where_paramiko_waits_for_ever_goes_to_the_next_node(
        cluster, faults, monkeypatch):
    """paramiko awaits the answer to an exec request without a time-out
    (Channel._wait_for_event). Our sshd processes on login1 stopped just
    before one, on an open channel: the watchdog closes login1's connection
    at the command's bound, and the command runs on login2."""
    monkeypatch.setattr(remote, "CONNECT_TIMEOUT", 1)  # the bound: 14 s + 2 x timeout
    site = Site(site_options(cluster))
    exits: list = []
    site.watchdog = Watchdog(on_stuck=lambda what, bound: exits.append(what), every=0.5)
    exec_command, armed = paramiko.Channel.exec_command, []

    def stopped_first(channel, command):
        if armed and armed.pop():
            faults.freeze("login1", user_sshd("alice"))
        return exec_command(channel, command)
    monkeypatch.setattr(paramiko.Channel, "exec_command", stopped_first)
    site.watchdog.start()
    try:
        assert site.run(["hostname"]).host == "login1"
        armed.append(True)
        result = then_mended(faults, lambda: site.run(["hostname"], timeout=5))
        assert (result.host, result.stdout.strip(), exits) == ("login2", "login2", [])
    finally:
        site.watchdog.stop()
        site.close()


def test_an_sftp_start_caught_where_paramiko_waits_for_ever_goes_to_the_next_node(
        cluster, alice, faults, monkeypatch):
    """Opening SFTP waits without a time-out for the subsystem's answer.
    Our sshd processes on login1 stopped just before that request, on a
    connection already open: the watchdog closes it at the bound, and the
    file goes through login2."""
    monkeypatch.setattr(remote, "CONNECT_TIMEOUT", 1)  # the bound: 14 s + 2 x 5 s
    monkeypatch.setattr(remote, "COMMAND_TIMEOUT", 5)
    site = Site(site_options(cluster))
    exits: list = []
    site.watchdog = Watchdog(on_stuck=lambda what, bound: exits.append(what), every=0.5)
    invoke_subsystem, armed = paramiko.Channel.invoke_subsystem, [True]

    def stopped_first(channel, subsystem):
        if armed and armed.pop():
            faults.freeze("login1", user_sshd("alice"))
        return invoke_subsystem(channel, subsystem)
    monkeypatch.setattr(paramiko.Channel, "invoke_subsystem", stopped_first)
    target = "/home/alice/frozen-sftp-start.txt"
    site.watchdog.start()
    try:
        assert site.run(["hostname"]).host == "login1"
        then_mended(faults, lambda: site.put_text("whole\n", target, 0o600))
        assert (site.current, exits) == ("login2", [])
        assert alice.out(f"cat {target}", host="login2") == "whole"
    finally:
        site.watchdog.stop()
        site.close()
        alice.run(f"rm -f {target} {target}.partial-*", check=False)


@pytest.mark.parametrize("caught", ["opening-its-channel", "sending-its-request", "running"])
def test_a_command_caught_on_a_frozen_login_node_ends_with_the_tunnel_there(
        cluster, faults, monkeypatch, caught):
    """Our sshd processes on login1 stop, with a command there waiting for
    its channel, waiting for the answer to its exec request, or running.
    The ssh master to login1 (keep-alive every 2 s, 3 missed) ends on it,
    and takes the command's connection with it: the command comes back, on
    login2 or as cut off, where its own bounds (raised to 600 s here) would
    have held it. Seen in the forwarder: a record read caught so held the
    heartbeat 30 s behind a dead route. Once its request is sent, a command
    that must run once is not run again on login2: it may have run, or the
    frozen sshd may still read it (an sbatch would run twice)."""
    monkeypatch.setattr(logins, "CONNECT_TIMEOUT", 600)
    exec_command = paramiko.Channel.exec_command

    def stopped_first(channel, command):
        if caught == "sending-its-request" and "ran-once" in command:
            faults.freeze("login1", user_sshd("alice"))
        return exec_command(channel, command)
    monkeypatch.setattr(paramiko.Channel, "exec_command", stopped_first)
    options = site_options(cluster)
    site = Site(options)
    lost: list[str] = []
    runtime = Path(tempfile.mkdtemp(prefix="spl-", dir="/tmp"))

    def on_lost(login: str) -> None:
        lost.append(login)
        site.lost(login)

    async def frozen_under_a_command():
        tunnel = Tunnel(options, "login1", control_socket(runtime, 0), on_lost)
        await tunnel.start()
        try:
            assert (await asyncio.to_thread(site.run, ["hostname"])).host == "login1"
            if caught == "running":
                command = asyncio.ensure_future(asyncio.to_thread(
                    site.run, ["sh", "-c", "sleep 40; touch /tmp/ran-once-$(hostname)"],
                    timeout=600, once=True))
                await asyncio.to_thread(wait_for, "the command running", lambda: cluster.exec(
                    "login1", "pgrep", "-u", "alice", "-f", "sleep 40", check=False
                ) is not None, every=0.2)
                await asyncio.to_thread(faults.freeze, "login1", user_sshd("alice"))
            elif caught == "sending-its-request":
                command = asyncio.ensure_future(asyncio.to_thread(
                    site.run, ["sh", "-c", "touch /tmp/ran-once-$(hostname)"], once=True))
            else:
                await asyncio.to_thread(faults.freeze, "login1", user_sshd("alice"))
                command = asyncio.ensure_future(asyncio.to_thread(site.run, ["hostname"]))
            return await command
        finally:
            await tunnel.close()
    try:
        result = then_mended(faults, lambda: asyncio.run(frozen_under_a_command()))
    finally:
        site.close()
        shutil.rmtree(runtime, ignore_errors=True)
        cluster.exec("login1", "pkill", "-u", "alice", "-f", "sleep 40", check=False)
        ran_on_login2 = cluster.exec("login2", "ls", "/tmp/ran-once-login2", check=False)
        for login in ("login1", "login2"):
            cluster.exec(login, "rm", "-f", f"/tmp/ran-once-{login}", check=False)
    assert lost == ["login1"]
    if caught != "opening-its-channel":  # cut off, not run again: it may have done its work
        assert (result.host, result.returncode, ran_on_login2) == ("login1", -1, None), result
    else:
        assert (result.host, result.stdout.strip()) == ("login2", "login2"), result


def test_a_login_node_whose_sshd_froze_does_not_answer_through_our_master(cluster, faults):
    """Tunnel.answers, which decides after a failed probe whether the login
    node goes last: yes from a live sshd, no from a frozen one, while the
    master itself is still up (its keep-alive, 3 x 10 s, has not given up)."""
    options = site_options(cluster, heartbeat_time=10.0)
    runtime = Path(tempfile.mkdtemp(prefix="spl-", dir="/tmp"))

    async def asked():
        tunnel = Tunnel(options, "login1", control_socket(runtime, 0))
        await tunnel.start()
        try:
            started = time.monotonic()
            before = await tunnel.answers()
            print(f"answered in {time.monotonic() - started:.3f} s")
            await asyncio.to_thread(faults.freeze, "login1", user_sshd("alice"))
            return before, await tunnel.answers(), tunnel.alive
        finally:
            await tunnel.close()
    try:
        result = then_mended(faults, lambda: asyncio.run(asked()))
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    assert result == (True, False, True)


@pytest.mark.parametrize("sent", ["SIGINT", "SIGHUP", "SIGHUP-under-nohup"])
def test_a_terminal_ends_a_foreground_up_and_its_masters_quietly(cluster, tmp_path, sent):
    """A terminal's Ctrl-C (SIGINT) reaches its whole foreground process
    group, the ssh masters too (and the jumphost's mux client): each ended
    on it and logged `state=lost` while the forwarder closed. Closing the
    terminal (SIGHUP) killed the forwarder before it ended them. They are
    the forwarder's to end, and none is left. Under nohup, SIGHUP is
    ignored still: the forwarder serves on."""
    port, log = free_port(), tmp_path / "up.log"
    runtime = Path(os.environ["XDG_RUNTIME_DIR"]) / f"slurm-persist-{os.getuid()}" / "ctrlc"
    nohup = ["nohup"] if sent.endswith("nohup") else []
    proc = subprocess.Popen([*nohup, BIN, *up_args(cluster, "ctrlc", port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL,
                            start_new_session=True)  # its own group, as in a terminal
    try:
        wait_for("ctrlc serving", lambda: answers(port) or proc.poll() is not None, timeout=120)
        assert ssh_masters(runtime), log.read_text()
        os.killpg(proc.pid, signal.SIGHUP if sent.startswith("SIGHUP") else signal.SIGINT)
        if sent == "SIGHUP":  # a closed terminal's second, the kernel's after the shell's
            time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGHUP)
        if nohup:
            time.sleep(2)  # to act on it, were it not ignored
            assert proc.poll() is None and answers(port), log.read_text()
            os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 0, log.read_text()
        left = ssh_masters(runtime)  # before down, which would end them
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        cli("down", *site_args(cluster, "ctrlc"))
    text = log.read_text()
    assert "state=lost" not in text and "state=forwarder-stopped" in text, text
    assert left == {}


def test_a_switch_drops_the_old_forward(start_up, alice):
    up = start_up("switch")
    up.wait_serving()
    runtime = Path(os.environ["XDG_RUNTIME_DIR"]) / f"slurm-persist-{os.getuid()}" / "switch"
    assert [p.name for p in runtime.glob("*.sock")] == ["c0-f1.sock"]
    first = alice.out("squeue -h -n sp-switch -t R -o %i")
    alice.run(f"scancel {first}")
    wait_for("the successor serving", lambda: up.log.read_text().count("state=serving local=") >= 2
             and answers(up.port), timeout=90)
    # The master keeps no forward to a job that is gone.
    wait_for("only the new forward", lambda: [p.name for p in runtime.glob("*.sock")]
             == ["c0-f2.sock"], timeout=30)


def test_up_is_idempotent_and_down_cleans_up(cluster, alice, tmp_path):
    port = free_port()
    args = up_args(cluster, "idem", port, "--daemonize")
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert f"serving on http://127.0.0.1:{port}/" in first.stdout
    jobs = chain_jobs(alice, "idem")
    assert len(jobs) == 2  # the running job and its queued successor

    again = cli(*args)
    assert again.returncode == 0 and "already forwarding" in again.stdout
    assert chain_jobs(alice, "idem") == jobs

    state = Path(os.environ["XDG_STATE_HOME"]) / "slurm-persist/services/idem"
    pid = int((state / "forwarder.pid").read_text())
    # Where does a forwarder that logs nothing wait? SIGUSR1: its worker's stacks, in the log.
    os.kill(pid, signal.SIGUSR1)
    wait_for("the worker's stacks", lambda: "in foreground" in (state / "forwarder.log")
             .read_text(), timeout=10, every=0.2)
    assert answers(port)
    # The whole daemon, supervisor and worker (its own session and process group).
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    wait_for("the forwarder gone", lambda: not Path(f"/proc/{pid}").exists() or
             "zombie" in Path(f"/proc/{pid}/status").read_text().lower(), timeout=10)
    restarted = cli(*args)
    assert restarted.returncode == 0, restarted.stderr
    assert "chain-found" in restarted.stderr
    assert chain_jobs(alice, "idem") == jobs
    assert answers(port)

    down = cli("down", *site_args(cluster, "idem"))
    assert down.returncode == 0, down.stderr
    assert "cancelled jobs" in down.stdout
    assert chain_jobs(alice, "idem") == []
    with socket.socket() as sock:
        # Free for a new server: TIME_WAIT leftovers of closed client
        # connections do not count, as for any server that binds it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_down_ends_the_ssh_masters_of_a_killed_forwarder(cluster, alice):
    """Supervisor and worker killed one by one (kill -9: no group signal,
    no close): their ssh masters run on, adopted; `down` ends them."""
    port = free_port()
    assert cli(*up_args(cluster, "orphan", port, "--daemonize")).returncode == 0
    state = Path(os.environ["XDG_STATE_HOME"]) / "slurm-persist/services/orphan"
    runtime = Path(os.environ["XDG_RUNTIME_DIR"]) / f"slurm-persist-{os.getuid()}" / "orphan"
    supervisor = int((state / "forwarder.pid").read_text())
    worker = json.loads((state / "status.json").read_text())["pid"]
    for pid in (supervisor, worker):
        os.kill(pid, signal.SIGKILL)
    wait_for("the masters adopted", lambda: (m := ssh_masters(runtime)) and all(
        parent != worker for parent, _ in m.values()), timeout=10, every=0.2)
    down = cli("down", *site_args(cluster, "orphan"))
    assert down.returncode == 0, down.stderr
    assert "no forwarder was running" in down.stdout and "ended 2 ssh masters" in down.stdout
    wait_for("no master left", lambda: not ssh_masters(runtime), timeout=10, every=0.2)
    assert chain_jobs(alice, "orphan") == []


def test_status_reads_well(start_up, cluster):
    up = start_up("stat")
    up.wait_serving()
    out = cli("status", *site_args(cluster, "stat"), "--local-port", str(up.port))
    assert out.returncode == 0, out.stderr
    rows = dict(line.split(None, 1) for line in out.stdout.splitlines())
    assert rows["service"] == "stat" and rows["state"] == "serving"
    assert rows["node"] in ("node1", "node2")
    assert rows["url"] == f"http://127.0.0.1:{up.port}/"
    assert rows["forwarder"].startswith(f"pid {up.proc.pid} serving since ")
    data = json.loads(cli("status", *site_args(cluster, "stat"), "--local-port", str(up.port),
                          "--json").stdout)
    running, pending = data["jobs"]  # the serving job and its queued successor
    assert running["state"] == "RUNNING" and running["record"] == "serving"
    assert running["ends_at"] > time.time() and running["rollover_at"] < running["ends_at"]
    assert pending["state"] == "PENDING" and pending["reason"] == "Dependency"
    assert int(pending["job"]) > int(running["job"]) and data["reason"] == "-"
    listed = cli("list", *site_args(cluster, "stat")).stdout.splitlines()
    row = next(line for line in listed if line.split()[0] == "stat")
    assert f"pid {up.proc.pid} serving 127.0.0.1:{up.port}" in row
    assert f"{running['job']}:RUNNING" in row and f"{pending['job']}:PENDING" in row
    logs = cli("logs", *site_args(cluster, "stat"), "--lines", "50")
    assert logs.returncode == 0 and "state=serving" in logs.stdout
    # The pending job has no log yet (as a pruned one has none any more).
    gone = cli("logs", *site_args(cluster, "stat"), "--job", pending["job"])
    one_line_error(gone, f"job {pending['job']} has no log")


def one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("slurm-persist: error: ") and fragment in last, result.stderr


def test_wrong_login_host(cluster):
    args = ["status", "--name", "bad", "--hpc-system-url", "login9", "--jumphost-url", JUMP_ALIAS,
            "--jumphost-username", JUMP_USER, "--username", "alice",
            "--ssh-config", str(cluster.ssh_config), "--retries", "0"]
    one_line_error(cli(*args), "login9")


def test_unreachable_jumphost(cluster):
    args = ["status", "--name", "bad", "--hpc-system-url", "login1",
            "--jumphost-url", f"127.0.0.1:{free_port()}", "--jumphost-username", JUMP_USER,
            "--username", "alice", "--ssh-config", str(cluster.ssh_config), "--retries", "0"]
    one_line_error(cli(*args), "login1")


def test_missing_script_dir(cluster, tmp_path):
    port = free_port()
    args = up_args(cluster, "nodir", port)
    args[args.index("--local-hpc-script-dir") + 1] = str(tmp_path / "missing")
    one_line_error(cli(*args), "no slurm.sbatch there")


def test_busy_port(cluster):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        one_line_error(cli(*up_args(cluster, "busy", port)), f"local-port {port} is already in use")


def test_malformed_toml(tmp_path):
    (tmp_path / "slurm-persist.toml").write_text("[services.hpc\nlocal_port = 1\n")
    one_line_error(cli("status", cwd=tmp_path), "not valid TOML")


# Dies before the agent runs, as a job script with a wrong module name would:
# no agent, so no crash-loop guard of the agent's counts it.
DIES_EARLY = """#!/bin/bash
echo "module load python/9.9: no such module" >&2
exit 1
"""


def test_jobs_that_die_before_the_agent_are_not_replaced_for_ever(cluster, alice, tmp_path):
    app = tmp_path / "app"
    shutil.copytree(HPC, app)
    (app / "slurm.sbatch").write_text(DIES_EARLY)
    args = up_args(cluster, "dies-early", free_port())
    args[args.index("--local-hpc-script-dir") + 1] = str(app)
    result = cli(*args)
    one_line_error(result, "3 chains in a row ended without serving; not starting another")
    assert "module load python/9.9: no such module" in result.stderr.splitlines()[-1]
    assert result.stderr.count("state=chain-started") == 3
    assert chain_jobs(alice, "dies-early") == []


def test_up_on_a_socket_systemd_passes(cluster, tmp_path):
    """As systemd-socket-activate starts a service: the port already bound
    and listening at fd 3, LISTEN_PID the service's own pid."""
    from remote_agent.listener import tcp_socket
    sock = tcp_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))  # before anything runs
    args = shlex.join([BIN, *up_args(cluster, "sockact", port)])
    log = tmp_path / "up.log"
    proc = subprocess.Popen(["bash", "-c", f"LISTEN_PID=$$ LISTEN_FDS=1 exec {args} "
                             f"3<&{sock.fileno()}"], pass_fds=[sock.fileno()],
                            stdout=log.open("w"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    sock.close()  # the service's alone now, as with systemd
    try:
        client.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        client.settimeout(120)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
        assert answer.split(b"\r\n")[0].endswith(b" 200 OK"), log.read_text()
        assert answers(port) and "already in use" not in log.read_text()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        client.close()
        cli("down", *site_args(cluster, "sockact"))


def test_a_unix_socket_instead_of_a_port_for_a_shared_machine(cluster, tmp_path):
    """Loopback is open to every user of the machine; a 0600 socket is not."""
    import http.client
    import stat as stat_module
    path = tempfile.mkdtemp(prefix="sps-") + "/model.sock"

    class UnixHTTP(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(30)
            self.sock.connect(path)

    def answers_on_socket() -> bool:
        try:
            conn = UnixHTTP("localhost")
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False

    args = up_args(cluster, "unixsock", free_port(), "--local-socket", path)
    proc = subprocess.Popen([BIN, *args], stdout=(tmp_path / "up.log").open("w"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for("answers on the socket", answers_on_socket, timeout=120)
        assert stat_module.S_IMODE(os.stat(path).st_mode) == 0o600
        status = cli("status", *site_args(cluster, "unixsock"), "--local-socket", path).stdout
        url = next(line for line in status.splitlines() if line.startswith("url"))
        assert url.split(None, 1)[1].startswith(f"unix:{path}"), status
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        cli("down", *site_args(cluster, "unixsock"))
