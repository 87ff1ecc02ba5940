"""Replicas' slots: job names that no other service can take, and first
jobs staggered so that two slots never roll over at once."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remote_agent import slots, slurm
from remote_agent.endpoint import Endpoint, loads
from remote_agent.slurm import capacity
from remote_agent.spec import NAME_RE, Spec, SpecError

names = st.from_regex(NAME_RE, fullmatch=True)


@given(names, st.integers(0, slots.MAX_REPLICAS - 1))
def test_a_slot_is_read_back_from_its_job_name(base, slot):
    assert slots.slot_of(base, slots.job_name(base, slot)) == slot


@given(names, names, st.integers(0, slots.MAX_REPLICAS - 1))
def test_another_service_s_jobs_are_never_one_of_our_slots(base, other, slot):
    if other != base:
        assert slots.slot_of(base, slots.job_name(other, slot)) is None


@pytest.mark.parametrize("name", ["sp-x+0", "sp-x+01", "sp-x+", "sp-x+a", "sp-x+1+1", "sp-y"])
def test_odd_names_are_no_slot(name):
    assert slots.slot_of("sp-x", name) is None


def test_the_first_slot_gets_the_whole_limit_and_the_second_half_of_it():
    assert slots.first_limit(60, 2, []) == 60
    assert slots.first_limit(60, 2, [60]) == 30
    # A slot restarted while the other has 10 minutes left: its end is put
    # half a limit away from the other's rollovers.
    assert slots.first_limit(60, 2, [10]) == 40


@given(st.integers(2, 2880), st.integers(2, slots.MAX_REPLICAS),
       st.lists(st.floats(0.5, 2880), max_size=slots.MAX_REPLICAS - 1))
def test_a_first_limit_is_within_bounds_and_never_on_another_rollover(full, replicas, ends):
    limit = slots.first_limit(full, replicas, ends)
    assert max(1, full // replicas) <= limit <= full
    if ends and len(ends) < replicas:
        # Fewer than N ends, each within d of a stretch 2d long, cannot cover
        # the limits allowed (full - full/N long) unless d >= full / 2N.
        closest = min(min(abs(limit - e % full), full - abs(limit - e % full)) for e in ends)
        assert closest >= full / (2 * replicas) - 1


def test_sbatch_names_the_slot_and_a_staggered_limit_comes_last():
    spec = Spec(name="x", job_name="sp-x", service_dir="/h/s", app_dir="/h/s/app",
                agent_dir="/h/a", sbatch_options=["--time=60"], replicas=2)
    argv = slurm.sbatch_argv(spec, script="", slot=1, limit=30)
    assert "--job-name=sp-x+1" in argv
    times = [a for a in argv if a.startswith("--time=")]
    assert times == ["--time=60", "--time=30"]
    assert not any(a.startswith("--time-min") for a in argv)  # no maintenance ahead
    # A maintenance 40 minutes on: the staggered 30 minutes fit, the asked 60 would not.
    maint = capacity.Reservation("m", 1000.0 + 40 * 60, 1000.0 + 100 * 60, "MAINT")
    assert not any(a.startswith("--time-min") for a in slurm.sbatch_argv(
        spec, script="", slot=1, limit=30, reservations=[maint], start=1000.0))
    crossing = slurm.sbatch_argv(spec, script="", slot=1, limit=50, reservations=[maint],
                                 start=1000.0)
    assert crossing[-2] == "--time-min=3"


def test_replicas_out_of_range_are_refused():
    with pytest.raises(SpecError, match="replicas 0"):
        Spec(name="x", job_name="sp-x", service_dir="/h/s", app_dir="/h/s/app",
             agent_dir="/h/a", replicas=0)


def test_a_record_of_an_agent_before_replicas_still_reads_as_slot_0():
    record = Endpoint(service="x", job_id="5", node="n1", host="n1", port=4000, socket=None,
                      login_node=None, state="serving", started=0.0, ends_at=None,
                      secret="00" * 16, slot=1, app="abc")
    assert loads(record.dumps()) == record
    old = record.dumps().replace(', "slot": 1', "").replace('"app": "abc", ', "")
    assert '"slot"' not in old and '"app"' not in old
    assert (loads(old).slot, loads(old).app) == (0, "")


def test_idle_cpus_count_only_nodes_that_take_jobs_now():
    text = ("node1|4/0/0/4|alloc\nnode2|1/3/0/4|mix\nnode3|0/4/0/4|idle\n"
            "node4|0/4/0/4|idle*\nnode5|0/0/4/4|drain\nnode6|0/4/0/4|idle~\n")
    assert capacity.parse_idle_cpus(text) == {"node2": 3, "node3": 4}


def test_excluded_nodes_go_last_on_sbatch_s_command_line():
    spec = Spec(name="x", job_name="sp-x", service_dir="/h/s", app_dir="/h/s/app",
                agent_dir="/h/a", replicas=2)
    argv = slurm.sbatch_argv(spec, slot=1, exclude=["node1", "node3"])
    assert "--exclude=node1,node3" in argv and argv[-1] == "/h/s/app/slurm.sbatch"
