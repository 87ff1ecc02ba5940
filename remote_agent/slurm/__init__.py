"""The one place that knows SLURM's command lines and text formats.

Builds argv lists (never shell strings: a caller that must go through a
shell joins them with ``shlex.join``) and parses what the commands print.
Used by the agent inside jobs and, over SSH, by the local side.

What the cluster offers (partitions, free nodes, reservations) is in
slurm.capacity. Job state is three-valued: a query that succeeds says which jobs exist (an
empty answer means *gone*); a query that fails or prints garbage raises
:class:`SlurmUnknown`, which never counts as gone. squeue exits non-zero
both for a vanished job id and for an unreachable controller, so chains are
always looked up by job name and user, where "none" is an exit 0.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence

from .. import layout, slots
from ..spec import Spec

if TYPE_CHECKING:
    from .capacity import Reservation

ACTIVE_STATES = frozenset({
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED",
    "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
})
# A job that ended in one of these was ended by the cluster (its node, the
# boot of its node, a preemption), not by the service it ran.
CLUSTER_END_STATES = frozenset({"NODE_FAIL", "BOOT_FAIL", "PREEMPTED"})
_FIELDS = ("job_id", "name", "state", "node", "reason", "time_limit", "end_time", "start_time")
SQUEUE_FORMAT = "|".join(("%i", "%j", "%T", "%N", "%r", "%l", "%e", "%S"))
_JOB_ID = re.compile(r"^\d+$")


class SlurmUnknown(RuntimeError):
    """SLURM gave no usable answer: the state is unknown, not empty."""


@dataclass(frozen=True)
class Job:
    job_id: str
    name: str
    state: str
    node: str
    reason: str
    time_limit: str
    end_time: str
    start_time: str

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"

    @property
    def pending(self) -> bool:
        return self.state == "PENDING"

    def end_epoch(self) -> Optional[float]:
        return parse_timestamp(self.end_time)

    def start_epoch(self) -> Optional[float]:
        """When it started, or for a pending job SLURM's estimate (None: unknown)."""
        return parse_timestamp(self.start_time)

    def limit_minutes(self) -> Optional[int]:
        return parse_duration_minutes(self.time_limit)


def squeue_argv(user: str, job_name: Optional[str] = None, job_id: Optional[str] = None,
                ended: bool = False) -> List[str]:
    """ended: jobs that have finished too, for as long as the controller
    keeps them (MinJobAge, 300 s by default)."""
    argv = ["squeue", "--noheader", f"--user={user}", f"--format={SQUEUE_FORMAT}"]
    if ended:
        argv.append("--states=all")
    if job_name is not None:
        argv.append(f"--name={job_name}")
    if job_id is not None:
        argv.append(f"--jobs={job_id}")
    return argv


def parse_squeue(text: str) -> List[Job]:
    jobs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != len(_FIELDS) or not _JOB_ID.match(parts[0]):
            raise SlurmUnknown(f"unexpected squeue line: {line[:200]!r}")
        jobs.append(Job(*parts))
    return jobs


def interpret_squeue(returncode: int, stdout: str, stderr: str) -> List[Job]:
    """Active jobs, or SlurmUnknown; an exit 0 with no line means none."""
    if returncode != 0:
        raise SlurmUnknown(f"squeue exited {returncode}: {stderr.strip()[:300]}")
    return [job for job in parse_squeue(stdout) if job.state in ACTIVE_STATES]


def interpret_ended(returncode: int, stdout: str, stderr: str) -> Optional[Job]:
    """The last record of one job asked for by id with ended=True; None
    when SLURM has forgotten it (or cannot say): the caller learns nothing."""
    if returncode != 0:
        return None
    try:
        jobs = parse_squeue(stdout)
    except SlurmUnknown:
        return None
    return jobs[0] if len(jobs) == 1 else None


# Failures of the node a command ran on, seen on the sandbox: its munged
# gone ("Munge encode failed", then "Protocol authentication error": the
# credential is made on the node, and a wrong key or clock is refused the
# same way), its way to the controller broken (connect failure, name
# resolution), no SLURM client there. The controller acted on nothing, so
# another login node may answer, and even an sbatch may be tried there.
# Not a time-out: that is mostly a controller slow or gone for every node,
# and asking each node in turn would multiply the wait before "unknown".
_NOT_ACTED_ON = re.compile(r"Munge encode failed|authentication error|Unable to contact slurm "
                           r"controller|Unable to resolve|Unable to establish control machine "
                           r"address|command not found")
NOT_FOUND = 127  # the shell's "command not found"


def failed_on_node(returncode: int, stderr: str) -> bool:
    """Whether a failed command may succeed on another login node."""
    return returncode != 0 and (returncode == NOT_FOUND or bool(_NOT_ACTED_ON.search(stderr)))


def shortest_minutes(spec: Spec, script: str, limit: Optional[int] = None) -> Optional[int]:
    """The shortest limit a job of this chain is of use with, or None when
    it cannot be shortened: shorter than its warning plus a minute (or the
    overlap plus one) a job is of no use, and a limit SLURM does not know
    (the site's default) is left alone. limit: the job's own, if not the
    script's (a staggered first job)."""
    wanted = limit or requested_minutes(spec.sbatch_options, script)
    floor = max(2, -(-spec.warn_seconds // 60) + 1, spec.overlap_minutes + 1)
    return floor if wanted is not None and floor < wanted else None


def time_min(spec: Spec, script: str, reservations: Sequence[Reservation] = (),
             start: Optional[float] = None, limit: Optional[int] = None) -> Optional[int]:
    """--time-min for a job of this chain expected to start at `start` (now
    by default), or None. A job whose limit would cross a maintenance
    reservation is held until after it, and the chain's gap grows by the
    whole wait; with --time-min the scheduler may start it with a shorter
    limit instead. Only then: SLURM (22.05, backfill) starts every job that
    carries --time-min with that limit, reservation or not (seen on the
    sandbox: 3 of 5, 6 or 10 minutes), and a chain of 8-hour jobs would roll
    over every few minutes."""
    from .capacity import maintenance_ahead  # capacity reads durations from here
    wanted = limit or requested_minutes(spec.sbatch_options, script)
    shortest = shortest_minutes(spec, script, wanted)
    if shortest is None or wanted is None:
        return None
    when = time.time() if start is None else start
    return shortest if maintenance_ahead(reservations, when, wanted) is not None else None


def sbatch_argv(spec: Spec, dependency: Optional[str] = None, script: str = "", slot: int = 0,
                limit: Optional[int] = None, exclude: Sequence[str] = (),
                reservations: Sequence[Reservation] = (),
                start: Optional[float] = None) -> List[str]:
    """The job's paths go in sbatch's own environment, which --export=ALL
    copies as it is. Written into --export's list instead, a quote or a
    comma in a path makes sbatch drop the variables, and the job fails.
    script: the job script's text, for the --time it asks for; slot: the
    replica's chain (remote_agent.slots); limit: minutes, a staggered first
    job's shorter --time (given last, it is the one sbatch keeps); exclude:
    nodes to keep off (other replicas'); reservations and start: for
    --time-min (see time_min)."""
    argv = [
        "env", f"SLURM_PERSIST_SERVICE_DIR={spec.service_dir}",
        f"SLURM_PERSIST_AGENT_DIR={spec.agent_dir}",
        "sbatch", "--parsable", "--export=ALL",
        f"--job-name={slots.job_name(spec.job_name, slot)}",
        # A file name pattern: a '%' of the path itself must be '%%'.
        f"--output={layout.log_pattern(spec.service_dir)}",
        f"--chdir={spec.app_dir}",
        f"--signal=B:USR1@{spec.warn_seconds}",
        # A job lost with its node must end, not be requeued under the same id
        # behind a begin-time delay: its successor is what carries the service on.
        "--no-requeue",
        *spec.sbatch_options,
    ]
    if limit is not None:
        argv.append(f"--time={limit}")
    if exclude:
        argv.append(f"--exclude={','.join(exclude)}")
    shortest = time_min(spec, script, reservations, start, limit)
    if shortest is not None and not any(o.startswith("--time-min") for o in spec.sbatch_options):
        argv.append(f"--time-min={shortest}")
    if dependency:
        argv.append(f"--dependency={dependency}")
    argv.append(f"{spec.app_dir}/{spec.script}")
    return argv


def wrap_argv(job_name: str, output: str, minutes: int, partition: Optional[str],
              command: str) -> List[str]:
    """A one-off job running a shell command line (doctor's probe)."""
    return ["sbatch", "--parsable", f"--job-name={job_name}", f"--output={output}",
            f"--time={minutes}", *([f"--partition={partition}"] if partition else []),
            "--wrap", command]


def parse_sbatch(returncode: int, stdout: str, stderr: str) -> str:
    """The new job id; SlurmUnknown when sbatch failed or said something odd."""
    if returncode != 0:
        raise SlurmUnknown(f"sbatch exited {returncode}: {stderr.strip()[:300]}")
    first = stdout.strip().split(";")[0]
    if not _JOB_ID.match(first):
        raise SlurmUnknown(f"sbatch printed no job id: {stdout.strip()[:200]!r}")
    return first


def after_any(job_id: str) -> str:
    return f"afterany:{job_id}"


def after_start(job_id: str, minutes: int) -> str:
    """Eligible `minutes` after job_id *started*: the overlap dependency."""
    return f"after:{job_id}+{max(minutes, 0)}"


def scancel_argv(job_ids: Sequence[str]) -> List[str]:
    for job_id in job_ids:
        if not _JOB_ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
    return ["scancel", *job_ids]


def drain_argv(job_id: str) -> List[str]:
    """SIGTERM to the batch shell only (the agent): it drains its open
    connections and ends the job itself; a plain scancel kills it after
    KillWait (10 s on the sandbox), before a 30 s drain is over."""
    return ["scancel", "--batch", "--signal=TERM", *scancel_argv([job_id])[1:]]


def release_argv(job_id: str) -> List[str]:
    """Drop a pending job's dependency so it may start at once."""
    return ["scontrol", "update", f"JobId={job_id}", "Dependency="]


def parse_timestamp(text: str) -> Optional[float]:
    """squeue's local-time stamps (2026-11-24T08:47:18); None for N/A etc."""
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def parse_duration_minutes(text: str) -> Optional[int]:
    """SLURM durations: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S; None for UNLIMITED."""
    days, dash, rest = text.strip().partition("-")
    if not dash:
        days, rest = "0", days
    parts = rest.split(":")
    if not days.isdigit() or not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
        return None
    nums = [int(p) for p in parts] + [0]
    # With days the first number is hours; without, minutes unless there are three.
    hours, minutes = nums[:2] if dash or len(parts) == 3 else (0, nums[0])
    return int(days) * 1440 + hours * 60 + minutes


def requested_minutes(options: Sequence[str], script: str) -> Optional[int]:
    """The --time a job gets (see requested), in minutes; None when SLURM's default."""
    return parse_duration_minutes(requested(options, script, "time") or "")


def requested(options: Sequence[str], script: str, name: str) -> Optional[str]:
    """An sbatch option's value (--time, --partition) as a job would get it:
    the command line's over the script's #SBATCH lines."""
    for option in options:
        if option.startswith(f"--{name}="):
            return option.split("=", 1)[1]
    for line in script.splitlines():
        words = line.strip().split()
        if len(words) >= 2 and words[0] == "#SBATCH" and words[1].startswith(f"--{name}="):
            return words[1].split("=", 1)[1]
    return None
