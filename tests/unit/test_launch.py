"""Starting slots, with SLURM answered in memory: which slots get a job,
their staggered limits, the nodes they keep off, and what an unsure sbatch
leaves behind."""

from __future__ import annotations

import time

import pytest

from local.config import Options
from local.launch import Launch, SubmitUnknown
from local.remote import TIMED_OUT, ClusterError, Result
from remote_agent import slots
from remote_agent.slurm import Job
from remote_agent.spec import Spec


def job(job_id: str, slot: int, state: str = "RUNNING", node: str = "node1",
        minutes_left: float = 30) -> Job:
    end = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + minutes_left * 60))
    return Job(job_id, slots.job_name("sp-x", slot), state, node if state == "RUNNING" else "",
               "None", "1:00:00", end if state == "RUNNING" else "N/A", "N/A")


class FakeChain:
    """jobs() as a test sets them; sbatch answers with the next job id."""

    def __init__(self, tmp_path, jobs=(), replicas=2, idle="node1|4/0/0/4|alloc\n"
                 "node2|0/4/0/4|idle\n", sbatch_rc=0, lock_rc=0):
        (tmp_path / "slurm.sbatch").write_text("#SBATCH --time=01:00:00\n")
        self.options = Options(name="x", replicas=replicas, app_dir=str(tmp_path))
        self.job_list, self.idle, self.sbatch_rc, self.lock_rc = list(jobs), idle, sbatch_rc, \
            lock_rc
        self.ran: list[list[str]] = []
        self.agent_calls: list[str] = []
        self.next_id = 100

    def spec(self) -> Spec:
        return Spec(name="x", job_name="sp-x", service_dir="/h/s", app_dir="/h/s/app",
                    agent_dir="/h/a", replicas=self.options.replicas)

    def jobs(self):
        return self.job_list

    def slot(self, j: Job):
        return slots.slot_of("sp-x", j.name)

    def agent(self, command, *extra, timeout=0):
        self.agent_calls.append(command)
        return Result(self.lock_rc if command == "lock" else 0, "", "held by another up", "login1")

    def ended(self, job_id):
        return next((j for j in self.job_list if j.job_id == job_id), None)

    def run_slurm(self, argv, once=False):
        self.ran.append(argv)
        if argv[0] == "sinfo":
            return Result(0, self.idle, "", "login1")
        if "sbatch" in argv:
            assert once, "an sbatch cut off and run again on the next node may run twice"
            if self.sbatch_rc:
                return Result(self.sbatch_rc, "", "sbatch: error: timed out", "login1")
            self.next_id += 1
            slot = slots.slot_of("sp-x", next(a for a in argv if a.startswith("--job-name="))
                                 .split("=", 1)[1])
            self.job_list.append(job(str(self.next_id), slot, node=f"node{slot + 1}"))
            return Result(0, f"{self.next_id}\n", "", "login1")
        return Result(0, "", "", "login1")

    def submitted(self) -> list[list[str]]:
        return [argv for argv in self.ran if "sbatch" in argv]


def test_a_new_service_gets_every_slot_staggered_and_spread(tmp_path):
    chain = FakeChain(tmp_path)
    assert Launch(chain).ensure() == ("101", True)
    first, second = chain.submitted()
    assert "--job-name=sp-x" in first and not any(a.startswith("--exclude") for a in first)
    assert "--job-name=sp-x+1" in second and "--time=30" in second
    assert "--exclude=node1" in second  # slot 0 started on node1, node2 was idle
    assert chain.agent_calls == ["lock", "reset", "unlock"]
    assert sum(1 for argv in chain.ran if argv[0] == "scontrol") == 1  # reservations, once


def test_no_free_node_elsewhere_means_no_exclusion(tmp_path):
    chain = FakeChain(tmp_path, idle="node1|3/1/0/4|mix\nnode2|4/0/0/4|alloc\n")
    Launch(chain).ensure()
    assert not any(a.startswith("--exclude") for a in chain.submitted()[1])


def test_only_the_missing_slot_is_started_against_the_other_s_end(tmp_path):
    chain = FakeChain(tmp_path, [job("7", 0, minutes_left=10), job("8", 0, "PENDING")])
    assert Launch(chain).ensure([1]) == ("7", True)
    (argv,) = chain.submitted()
    assert "--job-name=sp-x+1" in argv and "--time=40" in argv  # 30 min from slot 0's end
    assert "reset" not in chain.agent_calls  # the chain lives: its state stays


def test_a_complete_service_starts_nothing(tmp_path):
    chain = FakeChain(tmp_path, [job("7", 0), job("9", 1)])
    assert Launch(chain).ensure() == ("7", False) and chain.submitted() == []


def test_fewer_replicas_cancel_the_slots_above(tmp_path):
    chain = FakeChain(tmp_path, [job("7", 0), job("9", 1), job("10", 1, "PENDING")], replicas=1)
    Launch(chain).ensure()
    assert ["scancel", "9", "10"] in chain.ran and chain.submitted() == []


def test_an_sbatch_cut_off_keeps_the_lock(tmp_path):
    chain = FakeChain(tmp_path, sbatch_rc=TIMED_OUT)
    with pytest.raises(SubmitUnknown):
        Launch(chain).ensure()
    assert chain.agent_calls == ["lock", "reset"]  # left to go stale: it may have gone through


def test_a_refused_sbatch_unlocks(tmp_path):
    chain = FakeChain(tmp_path, sbatch_rc=1)
    with pytest.raises(Exception, match="sbatch exited 1"):
        Launch(chain).ensure()
    assert chain.agent_calls[-1] == "unlock"


def test_another_up_holding_the_lock_is_a_clear_error(tmp_path):
    chain = FakeChain(tmp_path, lock_rc=3)
    with pytest.raises(ClusterError, match="another `up` of x held its lock"):
        Launch(chain).ensure()
