"""`slurm-persist doctor`: check a site before the first `up`.

Each of these was found only by a failing service before: a login node that
does not answer, SLURM that does not, a partition whose MaxTime is below
the service's --time, a maintenance reservation ahead, jobs that cannot
run sbatch (the agent submits its successor), a home the compute nodes do
not share, a low descriptor limit, login nodes that cannot reach compute
nodes (direct mode) or compute nodes that cannot reach login nodes
(reverse mode). It submits one tiny job of its own (remote_agent/probe.py)
and cancels it.
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from remote_agent import probe, slurm
from remote_agent.slurm import capacity

from .cluster import Chain
from .config import Options
from .remote import Unreachable

# A relay holds two descriptors a connection: under this, a few hundred clients fill a job.
NOFILE_MIN = 4096
JOB_START_TIMEOUT = 120.0
MAINT_HORIZON = 7 * 86400.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run(chain: Chain, options: Options) -> list[Check]:
    checks = _logins(chain, options)
    if not any(c.ok for c in checks):
        return checks
    try:
        chain.all_jobs()
        checks.append(Check("SLURM answers", True, "squeue ran"))
    except slurm.SlurmUnknown as exc:
        checks.append(Check("SLURM answers", False, str(exc)[:200],
                            "ask the site: squeue fails on the login nodes"))
        return checks
    script = (Path(options.app_dir) / "slurm.sbatch")
    text = script.read_text() if script.is_file() else ""
    checks += _time_limits(chain, options, text)
    checks += _probe(chain, options, slurm.requested(options.sbatch_options, text, "partition"))
    return checks


def _logins(chain: Chain, options: Options) -> list[Check]:
    found = []
    for login in options.login_nodes:
        try:
            answer = chain.site.run_at(login, ["hostname"])
            found.append(Check(f"login node {login}", answer.returncode == 0,
                               f"answers as {answer.stdout.strip()}"))
        except Unreachable as exc:
            found.append(Check(f"login node {login}", False, str(exc)[:200],
                               "check the name, the jumphost and your ssh config"))
    return found


def _time_limits(chain: Chain, options: Options, script: str) -> list[Check]:
    sinfo = chain.site.run(capacity.partitions_argv())
    limits = capacity.parse_partitions(sinfo.stdout)
    partition = (slurm.requested(options.sbatch_options, script, "partition")
                 or capacity.default_partition(sinfo.stdout) or "?")
    wanted = slurm.requested_minutes(options.sbatch_options, script)
    most = limits.get(partition)
    if partition not in limits:
        checks = [Check("partition", False, f"{partition!r} is not one of {sorted(limits)}",
                        "name a partition sinfo lists in --sbatch-option=--partition=")]
    elif wanted is not None and most is not None and wanted > most:
        checks = [Check("partition time limit", False,
                        f"--time is {wanted} min, {partition}'s MaxTime {most} min",
                        f"ask for --time={most} or less, or another partition")]
    else:
        checks = [Check("partition time limit", True,
                        f"--time {wanted or 'default'} min within {partition}'s "
                        f"{'UNLIMITED' if most is None else f'{most} min'}")]
    reservations = capacity.parse_reservations(chain.site.run(capacity.reservations_argv()).stdout)
    ahead = [r for r in reservations if r.maintenance and time.time() < r.end
             and r.start < time.time() + MAINT_HORIZON]
    checks.append(Check("maintenance ahead", not ahead, ", ".join(
        f"{r.name} {time.strftime('%Y-%m-%d %H:%M', time.localtime(r.start))}" for r in ahead)
        or "no MAINT reservation in the next 7 days",
        "the chain has a gap across it; plan --time so a job ends before it"))
    return checks


def _probe(chain: Chain, options: Options, partition: str | None) -> list[Check]:
    folder = f"{chain.layout.home}/.slurm-persist/doctor"
    token = f"{folder}/{uuid.uuid4().hex}"
    chain.site.run(["mkdir", "-p", folder])
    chain.site.run(["touch", token])
    wrap = shlex.join(["python3", "-c", Path(probe.__file__).read_text(), token,
                       ",".join(options.login_nodes)])
    submitted = chain.site.run(slurm.wrap_argv("sp-doctor", f"{folder}/%j.out", 5, partition,
                                               wrap), once=True)
    try:
        job = slurm.parse_sbatch(submitted.returncode, submitted.stdout, submitted.stderr)
    except slurm.SlurmUnknown as exc:
        return [Check("a job runs", False, str(exc)[:200],
                      "sbatch gave no answer; a test job may be queued: squeue -n sp-doctor"
                      if submitted.unanswered else "sbatch refused a 5-minute job")]
    try:
        return _read_probe(chain, options, f"{folder}/{job}.out", job)
    finally:
        chain.site.run(slurm.scancel_argv([job]))
        chain.site.run(["rm", "-f", token, f"{folder}/{job}.out"])


def _read_probe(chain: Chain, options: Options, output: str, job: str) -> list[Check]:
    deadline = time.monotonic() + JOB_START_TIMEOUT
    text = ""
    while "PORT " not in text and time.monotonic() < deadline:
        time.sleep(1)
        text = chain.site.run(["cat", output]).stdout
    if "PORT " not in text:
        record = chain.ended(job)
        why = f"{record.state} {record.reason}" if record else ""
        return [Check("a job runs", False, f"not started within {JOB_START_TIMEOUT:.0f} s "
                      f"({why or 'gone'})", "see why with squeue --start")]
    port = int(text.split("PORT ", 1)[1].split()[0])
    record = chain.ended(job)
    node = record.node if record else ""
    reach = chain.site.run(["python3", "-c", "import socket,sys; socket.create_connection("
                            "(sys.argv[1], int(sys.argv[2])), 5)", node, str(port)])
    while "{" not in text and time.monotonic() < deadline + 90:
        time.sleep(1)
        text = chain.site.run(["cat", output]).stdout
    report = json.loads(text[text.index("{"):].splitlines()[0])
    direct = options.mode == "direct"
    unreached = [login for login, ok in report["ssh_to_login"].items() if not ok]
    return [
        Check("a job runs", True, f"job {job} on {report['node']}"),
        Check("shared home", report["shared_home"], "a file written on the login node "
              + ("is" if report["shared_home"] else "is not") + " seen by the job",
              "slurm-persist needs a home (or service dir) shared by login and compute nodes"),
        Check("sbatch from a job", report["sbatch"], report["sbatch_said"] or "sbatch --test-only",
              "the agent submits its successor from the job: ask the site to allow sbatch there"),
        Check("descriptor limit in a job", report["nofile_hard"] >= NOFILE_MIN,
              f"soft {report['nofile_soft']}, hard {report['nofile_hard']}",
              f"about {report['nofile_hard'] // 2} connections fit; ask for a higher hard limit"),
        Check("login node reaches the job", reach.returncode == 0 or not direct,
              f"{node}:{port} " + ("answered" if reach.returncode == 0 else "did not answer")
              + ("" if direct else " (reverse mode does not need it)"),
              "use mode = \"reverse\": the job then connects out to a login node"),
        Check("job reaches the login nodes", not unreached or direct,
              "all answer on port 22" if not unreached else f"no answer from {unreached}"
              + ("" if not direct else " (direct mode does not need it)"),
              "reverse mode needs ssh from compute to login nodes: use direct mode"),
    ]


def table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{'ok  ' if c.ok else 'FAIL'}  {c.name.ljust(width)}  {c.detail}")
        if not c.ok and c.fix:
            lines.append(f"      {' ' * width}  fix: {c.fix}")
    return "\n".join(lines)
