"""Hostile input, end to end on the cluster.

What the tool refuses, it refuses in one line, with exit status 2 and
nothing written on the cluster. What it accepts (a cluster path or an
sbatch option value with spaces, quotes, ';', '$()' and '%') reaches SLURM
and the file system as the very characters given. A login node whose sshd
dies in the middle of a command, half a line printed, makes the forwarder
wait: never a second chain.
"""

from __future__ import annotations

import shlex
import time

import pytest

from helpers import HPC, Up, answers, cli, site_args, wait_for

pytestmark = pytest.mark.cluster

PWNED = "~/pwned"


def pwned(alice) -> bool:
    """Did any injected command run? (/home is shared by every host.)"""
    return alice.run(f"ls {PWNED} /tmp/pwned", check=False).returncode != 2


def services(alice) -> set[str]:
    return set(alice.out("ls -A ~/.slurm-persist/services 2>/dev/null || true").split())


def chain_jobs(cluster, name: str) -> list[tuple[str, str]]:
    """(job id, state) of the chain, asked of the controller, not over ssh."""
    out = cluster.exec("slurmctld", "squeue", "-h", "-n", f"sp-{name}", "-o", "%i %T")
    return [tuple(line.split()) for line in out.splitlines()]


@pytest.mark.parametrize("flag, value, complaint", [
    ("--name", f"$(touch {PWNED})", "service name"),
    ("--name", f"a;touch {PWNED}", "service name"),
    ("--name", f"`touch {PWNED}`", "service name"),
    ("--name", f"x\ntouch {PWNED}", "service name"),
    ("--hpc-job-name", "it's a job", "job name"),
    ("--fallback-system-url", "-oProxyCommand=touch /tmp/pwned", "is not a host name"),
    ("--sbatch-option", "--comment=x\n#SBATCH --uid=0", "sbatch option"),
    ("--sbatch-option", f"touch {PWNED}", "sbatch option"),
    ("--server-and-port-file", "~/sp\\dir", "backslashes"),
    ("--mode reverse --server-and-port-file", "~/sp:dir", "colon"),
])
def test_refused_in_one_line_with_nothing_written(cluster, alice, flag, value, complaint):
    before = services(alice)
    args = site_args(cluster, value) if flag == "--name" else [*site_args(cluster, "hostile"),
                                                                 *flag.split(), value]
    result = cli("deploy", *args, "--local-hpc-script-dir", HPC)
    errors = [line for line in result.stderr.splitlines() if line.startswith("slurm-persist:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1 and errors[0].startswith("slurm-persist: error:"), result.stderr
    assert complaint in errors[0] and errors[0] == result.stderr.strip().splitlines()[-1]
    assert services(alice) == before and not pwned(alice)


ODD_DIR = f"~/.sp odd/it's \"$(touch {PWNED})\"; 100%, a,b"
COMMENT = f"it's \"$(touch {PWNED})\"; `id` & 100%"


def test_odd_paths_and_option_values_arrive_verbatim(cluster, alice, tmp_path):
    odd = ["--server-and-port-file", ODD_DIR]
    up = Up(cluster, "oddity", tmp_path, *odd, "--sbatch-option", f"--comment={COMMENT}")
    try:
        up.wait_serving()
        jobs = chain_jobs(cluster, "oddity")
        comments = cluster.exec("slurmctld", "squeue", "-h", "-n", "sp-oddity", "-o", "%k")
        assert comments.splitlines() == [COMMENT] * len(jobs) and len(jobs) == 2
        running = next(job for job, state in jobs if state == "RUNNING")
        service_dir = alice.out("printenv HOME") + ODD_DIR[1:]
        # The record and the job's log are at the literal path ('%' is no pattern).
        for path in (f"endpoints/{running}.json", f"logs/{running}.out"):
            alice.run(f"test -s {shlex.quote(f'{service_dir}/{path}')}")
        status = cli("status", *site_args(cluster, "oddity"), *odd)
        assert status.returncode == 0 and f"{running}:RUNNING" in status.stdout, status.stderr
        logs = cli("logs", *site_args(cluster, "oddity"), *odd)
        assert logs.returncode == 0 and f"job={running}" in logs.stdout, logs.stderr
        assert not pwned(alice)
    finally:
        down = cli("down", *site_args(cluster, "oddity"), *odd)
        up.stop()
    assert down.returncode == 0 and "cancelled jobs" in down.stdout, down.stderr


# On PATH before the real squeue (via ~/.bashrc, which bash reads for
# commands that sshd runs): while ~/.sp-cut exists, a squeue started
# straight from an ssh session prints half a line, then its sshd dies.
CUT_SQUEUE = """#!/bin/sh
if [ -e "$HOME/.sp-cut" ] && [ "$(ps -o comm= -p "$PPID")" = sshd ]; then
    printf '12|sp-cut|RUNN'
    kill -9 "$PPID"
    exit 0
fi
exec /usr/bin/squeue "$@"
"""
BASHRC_LINE = 'PATH="$HOME/.sp-shim:$PATH"  # test_hostile'


@pytest.fixture
def cut_squeue(alice):
    """Install the shim; the returned switch turns the cut on and off."""
    alice.run(f"mkdir -p ~/.sp-shim && cat > ~/.sp-shim/squeue <<'EOF'\n{CUT_SQUEUE}EOF\n"
              "chmod 755 ~/.sp-shim/squeue")
    alice.run(f"echo {shlex.quote(BASHRC_LINE)} >> ~/.bashrc")

    def switch(on: bool) -> None:
        alice.run("touch ~/.sp-cut" if on else "rm -f ~/.sp-cut")
    yield switch
    switch(False)
    alice.run(f"grep -vxF {shlex.quote(BASHRC_LINE)} ~/.bashrc > ~/.bashrc.new; "
              "mv ~/.bashrc.new ~/.bashrc; rm -rf ~/.sp-shim")


def test_sshd_dying_mid_command_never_makes_a_second_chain(cluster, alice, tmp_path, cut_squeue):
    up = Up(cluster, "midcut", tmp_path)
    try:
        up.wait_serving()
        first = wait_for("one job running, one queued",
                         lambda: len(jobs := chain_jobs(cluster, "midcut")) == 2 and jobs)
        running = next(job for job, state in first if state == "RUNNING")
        cut_squeue(True)
        seen_ids: set[str] = set()
        most = {"RUNNING": 0, "PENDING": 0}
        cluster.exec("slurmctld", "scancel", running)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the forwarder cannot see SLURM now
            jobs = chain_jobs(cluster, "midcut")
            seen_ids |= {job for job, _ in jobs}
            for state in most:
                most[state] = max(most[state], [s for _, s in jobs].count(state))
            time.sleep(0.5)
        log = up.log.read_text()
        assert "slurm=unknown action=wait" in log, log
        status = cli("status", *site_args(cluster, "midcut"))
        assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
        # Cut off on each login node in turn (a read is asked on the next).
        assert "unknown (login1: the connection to login1 closed before squeue ended" \
            in status.stdout, status.stdout
        cut_squeue(False)
        wait_for("the successor serving on the same port", lambda: answers(up.port)
                 and "state=serving" in up.log.read_text().split("action=wait")[-1], timeout=60)
    finally:
        cut_squeue(False)
        up.stop()
    # The agents carried the chain on; the forwarder added nothing to it.
    assert most == {"RUNNING": 1, "PENDING": 1} and len(seen_ids) <= 3, (most, seen_ids)
    assert up.log.read_text().count("state=chain-started") == 1
