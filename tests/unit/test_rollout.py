"""rollout, with SLURM and the records answered in memory: the old jobs go
only once the new one serves; a new job that never serves goes, and the old
ones stay."""

from __future__ import annotations

import dataclasses

import pytest
from test_launch import FakeChain, job

from local import rollout
from local.remote import ClusterError
from local.rollout import Rollout
from local.snapshot import Snapshot
from remote_agent.chain import ChainState
from remote_agent.endpoint import Endpoint


def record(job_id: str, state: str) -> Endpoint:
    return Endpoint(service="x", job_id=job_id, node="node2", host="node2", port=4000,
                    socket=None, login_node=None, state=state, started=0.0, ends_at=None,
                    secret="00" * 16)


class Records(FakeChain):
    """The new job's record goes through `states`, one per look."""

    def __init__(self, tmp_path, jobs, states):
        super().__init__(tmp_path, jobs, replicas=1)
        self.states = list(states)

    def spec(self):
        return dataclasses.replace(super().spec(), drain_seconds=0.0)

    def snapshot(self):
        records = {}
        if self.next_id > 100 and self.states:
            state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            if state == "gone":
                self.job_list = [j for j in self.job_list if j.job_id != str(self.next_id)]
            else:
                records[str(self.next_id)] = record(str(self.next_id), state)
        return Snapshot(ChainState(), records)

    def run_slurm(self, argv, once=False):
        result = super().run_slurm(argv, once)
        if argv[0] == "scancel":  # drained or cancelled: gone from the queue
            gone = set(argv[1:])
            self.job_list = [j for j in self.job_list if j.job_id not in gone]
        return result


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(rollout, "POLL", 0)


def test_the_old_jobs_go_once_the_new_one_serves(tmp_path):
    chain = Records(tmp_path, [job("7", 0), job("8", 0, "PENDING")],
                    ["starting", "starting", "serving"])
    said: list[str] = []
    Rollout(chain, said.append).run()
    assert ["scancel", "8"] in chain.ran  # the old successor: the new job queues its own
    assert ["scancel", "--batch", "--signal=TERM", "7"] in chain.ran  # drains, then ends
    assert [j.job_id for j in chain.job_list] == ["101"]
    assert "job 101 serves" in said[-1]


def test_a_new_job_that_never_serves_goes_and_the_old_ones_stay(tmp_path):
    chain = Records(tmp_path, [job("7", 0), job("8", 0, "PENDING")], ["starting", "gone"])
    with pytest.raises(ClusterError, match="job 101 ended without serving; the old jobs serve on"):
        Rollout(chain, lambda line: None).run()
    assert [j.job_id for j in chain.job_list] == ["7", "8"]
    assert not any(argv[0] == "scancel" and "7" in argv for argv in chain.ran)


def test_nothing_to_replace_says_so(tmp_path):
    with pytest.raises(ClusterError, match="no job to replace"):
        Rollout(Records(tmp_path, [], ["serving"]), lambda line: None).run()
