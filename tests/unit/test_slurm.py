import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remote_agent import slurm
from remote_agent.slurm import SlurmUnknown, capacity
from remote_agent.spec import Spec, SpecError


def spec(**changes) -> Spec:
    values = dict(name="hpc", job_name="sp-hpc", service_dir="/home/a/.slurm-persist/services/hpc",
                  app_dir="/home/a/.slurm-persist/services/hpc/app",
                  agent_dir="/home/a/.slurm-persist/agent")
    values.update(changes)
    return Spec(**values)


SQUEUE = ("12|sp-hpc|RUNNING|node1|None|30:00|2026-11-24T09:30:00|2026-11-24T09:00:00\n"
          "13|sp-hpc|PENDING||Dependency|30:00|N/A|N/A\n")


def test_squeue_lines_become_jobs():
    jobs = slurm.interpret_squeue(0, SQUEUE, "")
    assert [(j.job_id, j.state, j.node, j.reason) for j in jobs] == [
        ("12", "RUNNING", "node1", "None"), ("13", "PENDING", "", "Dependency")]
    assert jobs[0].running and jobs[1].pending
    assert jobs[0].limit_minutes() == 30
    assert jobs[1].end_epoch() is None


def test_empty_answer_means_no_jobs():
    assert slurm.interpret_squeue(0, "", "") == []
    assert slurm.interpret_squeue(0, "\n\n", "") == []


def test_ended_states_are_not_active():
    line = "12|sp-hpc|COMPLETED|node1|None|30:00|N/A|N/A\n"
    assert slurm.interpret_squeue(0, line, "") == []


def test_failure_is_unknown_not_empty():
    with pytest.raises(SlurmUnknown, match="squeue exited 1"):
        slurm.interpret_squeue(1, "", "slurm_load_jobs error: Unable to contact slurm controller")


@pytest.mark.parametrize("garbage", [
    "JOBID PARTITION NAME\n", "12|sp-hpc|RUNNING\n", "x|a|b|c|d|e|f|g\n",
    SQUEUE[:40], "12|sp-hpc|RUNNING|node1|None|30:00|N/A|N/A|extra\n",
])
def test_garbage_is_unknown(garbage):
    with pytest.raises(SlurmUnknown):
        slurm.interpret_squeue(0, garbage, "")


@given(st.text(max_size=300))
def test_fuzz_squeue_parser(text):
    try:
        jobs = slurm.parse_squeue(text)
    except SlurmUnknown:
        return
    assert all(job.job_id.isdigit() for job in jobs)


def test_sbatch_parsing():
    assert slurm.parse_sbatch(0, "123\n", "") == "123"
    assert slurm.parse_sbatch(0, "123;cluster\n", "") == "123"
    with pytest.raises(SlurmUnknown):
        slurm.parse_sbatch(0, "Submitted batch job 123\n", "")
    with pytest.raises(SlurmUnknown, match="sbatch exited 1"):
        slurm.parse_sbatch(1, "", "Socket timed out")


def test_sbatch_argv_carries_name_output_signal_dependency():
    argv = slurm.sbatch_argv(spec(sbatch_options=["--time=00:02:00"]), slurm.after_any("12"))
    assert argv[:6] == ["env", "SLURM_PERSIST_SERVICE_DIR=/home/a/.slurm-persist/services/hpc",
                        "SLURM_PERSIST_AGENT_DIR=/home/a/.slurm-persist/agent",
                        "sbatch", "--parsable", "--export=ALL"]
    assert "--job-name=sp-hpc" in argv
    assert "--output=/home/a/.slurm-persist/services/hpc/logs/%j.out" in argv
    assert "--signal=B:USR1@90" in argv
    assert "--time=00:02:00" in argv
    assert "--dependency=afterany:12" in argv
    assert argv[-1] == "/home/a/.slurm-persist/services/hpc/app/slurm.sbatch"


def test_overlap_dependency():
    assert slurm.after_start("12", 28) == "after:12+28"
    assert slurm.after_start("12", -3) == "after:12+0"


@pytest.mark.parametrize("text, minutes", [
    ("30", 30), ("30:00", 30), ("1:00:00", 60), ("2:30:15", 150), ("1-00:00:00", 1440),
    ("2-03", 2 * 1440 + 180), ("1-01:30", 1440 + 90), ("UNLIMITED", None), ("INVALID", None),
    ("", None), ("1:2:3:4", None),
])
def test_durations(text, minutes):
    assert slurm.parse_duration_minutes(text) == minutes


def test_a_percent_in_the_service_dir_stays_literal_in_the_output_pattern():
    argv = slurm.sbatch_argv(spec(service_dir="/home/a/100% sure", app_dir="/home/a/app"))
    assert "--output=/home/a/100%% sure/logs/%j.out" in argv


def test_scancel_refuses_non_ids():
    assert slurm.scancel_argv(["1", "2"]) == ["scancel", "1", "2"]
    with pytest.raises(ValueError):
        slurm.scancel_argv(["1; rm -rf ~"])


HOSTILE = st.text(alphabet=st.sampled_from(list("ab ;'\"$()`\n\\|&*-.")), min_size=1, max_size=20)


@given(HOSTILE)
def test_hostile_names_never_reach_a_command(name):
    """Names are either plain or refused; a plain one survives shlex round trips."""
    try:
        argv = slurm.sbatch_argv(spec(name=name, job_name=name))
    except SpecError:
        return
    assert shlex.split(shlex.join(argv)) == argv
    assert f"--job-name={name}" in argv
    assert all(c not in name for c in " ;'\"$()`\n\\|&*")


@given(st.lists(HOSTILE, max_size=3))
def test_hostile_sbatch_options_are_refused_or_one_argument_each(options):
    try:
        argv = slurm.sbatch_argv(spec(sbatch_options=options))
    except SpecError:
        return
    assert shlex.split(shlex.join(argv)) == argv


# What the sandbox's SLURM 22.05 printed (stderr shortened to its telling lines).
MUNGE = ('error: Munge encode failed: Failed to access "/run/munge/munge.socket.2": No such file '
         'or directory (Did you start munged?)\n')
NODE_FAULTS = [
    # (returncode, stderr, may succeed on another login node)
    (1, "squeue: " + MUNGE + "slurm_load_jobs error: Protocol authentication error\n", True),
    (1, "sbatch: " + MUNGE + "sbatch: error: Batch job submission failed: Protocol "
        "authentication error\n", True),
    (239, "scancel: " + MUNGE + "scancel: error: Kill job error on job id 99999: Protocol "
          "authentication error\n", True),
    (1, "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n", True),
    (1, "sbatch: error: Batch job submission failed: Unable to contact slurm controller "
        "(connect failure)\n", True),
    (1, 'squeue: error: slurm_set_addr: Unable to resolve "slurmctld"\nsqueue: error: Unable to '
        "establish control machine address\nslurm_load_jobs error: Resource temporarily "
        "unavailable\n", True),
    (127, "bash: line 1: squeue: command not found\n", True),
    # No answer in time: mostly the controller, for every node alike.
    (124, "squeue did not answer within 30 s", False),
    (1, "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation\n",
     False),
    # SLURM's own answers: the same on every login node.
    (1, "sbatch: error: Batch job submission failed: Invalid account or account/partition "
        "combination specified\n", False),
    (1, "scancel: error: Kill job error on job id 99: Invalid job id specified\n", False),
    (1, "sbatch: error: invalid dependency specification\n", False),
    (-1, "the connection to login1 closed before sbatch ended", False),
    (0, "", False),
    (0, "squeue: " + MUNGE, False),
]


@pytest.mark.parametrize("returncode, stderr, elsewhere", NODE_FAULTS)
def test_failures_of_one_login_node_are_told_from_slurms_answers(returncode, stderr, elsewhere):
    assert slurm.failed_on_node(returncode, stderr) is elsewhere


@given(st.integers(-1, 255), st.text(max_size=200))
def test_an_answer_that_succeeded_is_never_asked_again(returncode, stderr):
    assert slurm.failed_on_node(0, stderr) is False
    assert isinstance(slurm.failed_on_node(returncode, stderr), bool)


def test_partitions_and_their_time_limits():
    text = "debug*|1-00:00:00\ngpu|4:00:00\nlong|infinite\n"
    assert capacity.parse_partitions(text) == {"debug": 1440, "gpu": 240, "long": None}
    assert capacity.default_partition(text) == "debug"


def test_maintenance_reservations_are_told_apart():
    text = ("ReservationName=maint StartTime=2026-12-01T08:00:00 EndTime=2026-12-01T12:00:00 "
            "Duration=04:00:00 Nodes=node[1-2] Flags=MAINT,SPEC_NODES\n"
            "ReservationName=course StartTime=2026-12-02T08:00:00 EndTime=2026-12-02T10:00:00 "
            "Flags=IGNORE_JOBS\n")
    found = capacity.parse_reservations(text)
    assert [(r.name, r.maintenance) for r in found] == [("maint", True), ("course", False)]
    assert found[0].end - found[0].start == 4 * 3600
    assert capacity.parse_reservations("No reservations in the system\n") == []


def test_an_option_on_the_command_line_wins_over_the_script():
    script = "#!/bin/bash\n#SBATCH --time=00:30:00\n##SBATCH --partition=gpu\n"
    assert slurm.requested([], script, "time") == "00:30:00"
    assert slurm.requested(["--time=2:00:00"], script, "time") == "2:00:00"
    assert slurm.requested([], script, "partition") is None  # ## is a comment


def test_a_job_may_be_shortened_to_fit_before_a_maintenance_but_not_below_use():
    script = "#!/bin/bash\n#SBATCH --time=00:30:00\n"
    ahead = [resv(1000.0 + 20 * 60, 60)]  # 20 minutes after the job's start
    argv = slurm.sbatch_argv(spec(), script=script, reservations=ahead, start=1000.0)
    assert "--time-min=3" in argv  # a 90 s warning plus a minute, rounded up
    overlapping = slurm.sbatch_argv(spec(overlap_minutes=10), script=script,
                                    reservations=ahead, start=1000.0)
    assert "--time-min=11" in overlapping
    short = slurm.sbatch_argv(spec(sbatch_options=["--time=2"]), script=script,
                              reservations=ahead, start=1000.0)
    assert not any(a.startswith("--time-min") for a in short)  # no room to shorten
    assert not any(a.startswith("--time-min") for a in slurm.sbatch_argv(
        spec(), script="", reservations=ahead, start=1000.0))
    own = slurm.sbatch_argv(spec(sbatch_options=["--time-min=20"]), script=script,
                            reservations=ahead, start=1000.0)
    assert [a for a in own if a.startswith("--time-min")] == ["--time-min=20"]


def test_no_time_min_without_a_maintenance_the_job_would_cross():
    """SLURM 22.05 starts a job carrying --time-min with that limit even with
    no reservation anywhere (seen on the sandbox: 5-minute jobs ran 3:00)."""
    script = "#!/bin/bash\n#SBATCH --time=00:30:00\n"
    def minimum(reservations):
        argv = slurm.sbatch_argv(spec(), script=script, reservations=reservations, start=1000.0)
        return [a for a in argv if a.startswith("--time-min")]
    assert minimum([]) == []
    assert minimum([resv(1000.0 + 30 * 60, 60)]) == []  # ends just in time
    assert minimum([resv(1000.0 + 30 * 60 - 1, 60)]) == ["--time-min=3"]
    assert minimum([resv(1000.0 + 10 * 60, 60, "IGNORE_JOBS")]) == []  # not maintenance
    assert minimum([resv(0.0, 10)]) == []  # long over

def resv(start: float, minutes: float, flags: str = "MAINT,IGNORE_JOBS") -> capacity.Reservation:
    return capacity.Reservation("m", start, start + minutes * 60, flags)


def test_a_job_waits_behind_a_maintenance_it_cannot_run_its_floor_before():
    maint = resv(1000.0, 3)
    assert capacity.maintenance_ahead([maint], 1000.0 - 180, 3) is None  # exactly fits
    assert capacity.maintenance_ahead([maint], 1000.0 - 179, 3) == maint
    assert capacity.maintenance_ahead([maint], 1100.0, 3) == maint  # under way
    assert capacity.maintenance_ahead([maint], 1180.0, 3) is None  # over
    assert capacity.maintenance_ahead([resv(1000.0, 3, "IGNORE_JOBS")], 900.0, 3) is None


def test_the_successor_is_released_early_only_when_the_warning_is_too_late():
    maint = resv(1000.0, 3)
    # Released at a warning 200 s before, it starts in time: nothing to do.
    assert capacity.early_release([maint], 800.0, 3, 20.0) is None
    # At a warning 100 s before it would wait: release it 180 + 20 s before.
    assert capacity.early_release([maint], 900.0, 3, 20.0) == 800.0
    assert capacity.early_release([maint], 1000.0, 3, 20.0) is None  # begun by then
    # CI: a warning 184 s before it fits 180 s only if the successor starts
    # within 4 s; it is given the 20 s lead, so released early.
    assert capacity.early_release([maint], 816.0, 3, 20.0) == 800.0
    assert capacity.early_release([], 900.0, 3, 20.0) is None


@given(st.lists(st.tuples(st.floats(0, 1e5), st.floats(1, 600), st.booleans()), max_size=5),
       st.floats(0, 1e5), st.integers(1, 600), st.floats(0, 120))
def test_an_early_release_leaves_the_successor_its_floor_before_every_maintenance(
        spans, warning, minutes, lead):
    reservations = [resv(start, length, "MAINT" if maint else "") for start, length, maint in spans]
    at = capacity.early_release(reservations, warning, minutes, lead)
    if at is None:
        return
    assert at < warning
    ahead = capacity.maintenance_ahead(reservations, warning + lead, minutes)
    assert ahead is not None and at + lead + minutes * 60 == pytest.approx(ahead.start)
