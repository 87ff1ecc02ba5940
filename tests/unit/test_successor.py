"""The successor keeper, branch by branch, with SLURM answered in memory:
exactly one successor, never two, and never on an unknown answer."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from test_maintenance_ahead import show, stamp

from remote_agent import chain, endpoint, successor
from remote_agent.endpoint import Endpoint
from remote_agent.joblog import Summariser
from remote_agent.slurm import Job
from remote_agent.spec import Spec
from remote_agent.successor import Successor


def line(job: str, state: str = "RUNNING", limit: str = "30:00") -> str:
    """One squeue line in slurm.SQUEUE_FORMAT's field order."""
    return f"{job}|sp-x|{state}|node1|None|{limit}|N/A|N/A"


class FakeSlurm:
    """Answers each argv by its command: a queue of (rc, out, err) per command."""

    def __init__(self, **answers):
        self.answers = {k: list(v) for k, v in answers.items()}
        self.calls: list[list[str]] = []

    async def __call__(self, argv):
        self.calls.append(argv)
        command = "sbatch" if "sbatch" in argv else argv[0]
        queue = self.answers.get(command, [])
        return queue.pop(0) if len(queue) > 1 else (queue[0] if queue else (0, "", ""))

    def ran(self, command: str) -> int:
        return sum(1 for argv in self.calls if command in argv)


@pytest.fixture
def keeper(tmp_path, monkeypatch):
    monkeypatch.setattr(successor, "OVERLAP_POLL", 0.01)

    def make(overlap: int = 0, **answers) -> Successor:
        spec = Spec(name="x", job_name="sp-x", service_dir=str(tmp_path),
                    app_dir=str(tmp_path / "app"), agent_dir=str(tmp_path / "agent"),
                    overlap_minutes=overlap, drain_seconds=0.01)
        made = Successor(spec, "20", "alice", 0, lambda *a: None, Summariser(lambda line: None))
        made.slurm = FakeSlurm(**answers)
        return made
    # The keeper's backoff (5 s, doubling) is its own business: not waited here.
    monkeypatch.setattr(successor.asyncio, "sleep", _no_wait(asyncio.sleep))
    return make


def _no_wait(real_sleep):
    async def sleep(seconds):
        await real_sleep(0)
    return sleep


async def test_a_queued_later_job_is_the_successor_and_nothing_is_submitted(keeper):
    k = keeper(squeue=[(0, line("20") + "\n" + line("21", "PENDING") + "\n", "")])
    assert await k.keep(None) == "21" and k.slurm.ran("sbatch") == 0


async def test_none_queued_submits_one_after_any(keeper):
    k = keeper(squeue=[(0, line("20") + "\n", "")], sbatch=[(0, "21\n", "")])
    assert await k.keep(None) == "21"
    submitted = next(argv for argv in k.slurm.calls if "sbatch" in argv)
    assert "--dependency=afterany:20" in submitted


async def test_with_overlap_the_successor_may_start_before_the_limit(keeper):
    own = Job("20", "sp-x", "RUNNING", "node1", "None", "1:00:00", "N/A", "N/A")
    k = keeper(overlap=10, squeue=[(0, line("20") + "\n", "")], sbatch=[(0, "21\n", "")])
    assert await k.keep(own) == "21"
    assert "--dependency=after:20+50" in next(a for a in k.slurm.calls if "sbatch" in a)


async def test_an_unknown_answer_is_asked_again_never_taken_as_none(keeper):
    timeout = (1, "", "slurm_load_jobs error: Socket timed out on send/recv operation")
    k = keeper(squeue=[timeout, timeout, (0, line("20") + "\n" + line("21", "PENDING"), "")])
    assert await k.keep(None) == "21" and k.slurm.ran("sbatch") == 0 and k.slurm.ran("squeue") == 3


async def test_a_failed_sbatch_is_followed_by_a_fresh_look_not_a_second_sbatch(keeper):
    """sbatch timed out but went through: the next look finds the job."""
    k = keeper(squeue=[(0, line("20"), ""), (0, line("20") + "\n" + line("21", "PENDING"), "")],
               sbatch=[(1, "", "sbatch: error: Socket timed out")])
    assert await k.keep(None) == "21" and k.slurm.ran("sbatch") == 1


async def test_a_stopped_chain_gets_no_successor_and_no_release(keeper, tmp_path):
    chain.save(tmp_path, chain.ChainState(0, True, "stopped by down"))
    k = keeper()
    assert await k.keep(None) is None and k.slurm.calls == []
    done = asyncio.get_running_loop().create_future()
    done.set_result("21")
    await k.release(done)
    assert k.slurm.calls == []


async def test_release_drops_the_dependency_of_the_queued_successor(keeper):
    k = keeper()
    done = asyncio.get_running_loop().create_future()
    done.set_result("21")
    await k.release(done)
    assert k.slurm.calls == [["scontrol", "update", "JobId=21", "Dependency="]]
    unsure = asyncio.get_running_loop().create_future()
    await k.release(unsure)  # still looking: nothing to release yet
    assert len(k.slurm.calls) == 1
    unsure.cancel()


async def test_stale_records_go_when_their_jobs_are_gone(keeper, tmp_path):
    folder = tmp_path / endpoint.ENDPOINTS_DIR
    folder.mkdir()
    for name in ("12.json", "20.json", "21.json"):
        (folder / name).write_text("{}")
    k = keeper(squeue=[(0, line("20") + "\n" + line("21", "PENDING"), "")])
    await k.keep(None)
    assert sorted(p.name for p in folder.iterdir()) == ["20.json", "21.json"]


async def test_the_overlap_watch_returns_once_a_later_job_serves(keeper, tmp_path):
    k = keeper(overlap=10)
    watching = asyncio.ensure_future(k.watch_for_serving())
    await asyncio.sleep(0)
    assert not watching.done()
    newer = Endpoint(service="x", job_id="21", node="node2", host="node2", port=4001,
                     socket=None, login_node=None, state="serving", started=0.0, ends_at=None,
                     secret="00" * 16)
    endpoint.write(tmp_path, newer.with_state("starting"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not watching.done()  # starting is not serving
    endpoint.write(tmp_path, newer)
    await asyncio.wait_for(watching, 5)


def slot_line(job: str, slot: int, state: str = "RUNNING") -> str:
    return line(job, state).replace("|sp-x|", f"|sp-x+{slot}|" if slot else "|sp-x|")


@pytest.fixture
def second_slot(keeper):
    def make(**answers) -> Successor:
        k = keeper(**answers)
        k.slot, k.spec = 1, dataclasses.replace(k.spec, replicas=2)
        return k
    return make


async def test_another_slot_s_later_job_is_not_this_slot_s_successor(second_slot):
    k = second_slot(squeue=[(0, "\n".join([slot_line("20", 1), slot_line("21", 0, "PENDING"),
                                           line("30", "PENDING").replace("sp-x", "sp-other")]),
                             "")], sbatch=[(0, "22\n", "")])
    assert await k.keep(None) == "22"
    submitted = next(argv for argv in k.slurm.calls if "sbatch" in argv)
    assert "--job-name=sp-x+1" in submitted and "--dependency=afterany:20" in submitted


async def test_records_of_other_slots_jobs_are_not_stale(second_slot, tmp_path):
    folder = tmp_path / endpoint.ENDPOINTS_DIR
    folder.mkdir()
    for name in ("12.json", "19.json", "20.json"):
        (folder / name).write_text("{}")
    k = second_slot(squeue=[(0, slot_line("19", 0) + "\n" + slot_line("20", 1) + "\n"
                             + slot_line("21", 1, "PENDING"), "")])
    assert await k.keep(None) == "21"
    assert sorted(p.name for p in folder.iterdir()) == ["19.json", "20.json"]


async def test_a_slot_above_the_deployed_replicas_submits_no_successor(second_slot, tmp_path):
    k = second_slot(squeue=[(0, slot_line("20", 1), "")])
    # `up` with replicas = 1 deployed since this job started:
    (tmp_path / "spec.json").write_text(dataclasses.replace(k.spec, replicas=1).dumps())
    assert await k.keep(None) is None and k.slurm.ran("sbatch") == 0


async def test_the_overlap_watch_ignores_another_slot_serving(keeper, tmp_path):
    k = keeper(overlap=10)
    watching = asyncio.ensure_future(k.watch_for_serving())
    other = Endpoint(service="x", job_id="21", node="node2", host="node2", port=4001,
                     socket=None, login_node=None, state="serving", started=0.0, ends_at=None,
                     secret="00" * 16, slot=1)
    endpoint.write(tmp_path, other)
    await asyncio.sleep(0.05)
    assert not watching.done()
    endpoint.write(tmp_path, dataclasses.replace(other, job_id="22", slot=0))
    await asyncio.wait_for(watching, 5)


async def test_a_successor_that_would_cross_a_maintenance_may_be_shortened(keeper, tmp_path):
    """--time-min only for a maintenance the successor, starting at this
    job's warning, would run into: SLURM starts every job carrying it with
    that limit."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "slurm.sbatch").write_text("#!/bin/bash\n#SBATCH --time=00:30:00\n")
    own = Job("20", "sp-x", "RUNNING", "node1", "None", "30:00", "2026-11-24T09:30:00",
              "2026-11-24T09:00:00")
    shows = {"far": "StartTime=2026-11-25T09:00:00 EndTime=2026-11-25T10:00:00",
             "near": "StartTime=2026-11-24T09:50:00 EndTime=2026-11-24T10:00:00"}
    for case, times in shows.items():
        k = keeper(squeue=[(0, line("20") + "\n", "")], sbatch=[(0, "21\n", "")],
                   scontrol=[(0, f"ReservationName=m {times} Flags=MAINT\n", "")])
        assert await k.keep(own) == "21"
        sbatch = next(argv for argv in k.slurm.calls if "sbatch" in argv)
        assert ("--time-min=3" in sbatch) == (case == "near"), case


async def test_an_unknown_answer_about_its_own_job_is_no_job(keeper):
    k = keeper(squeue=[(1, "", "slurm_load_jobs error: Socket timed out")])
    assert await k.own_job() is None


async def test_a_home_error_is_retried_like_an_unknown_answer(keeper, monkeypatch):
    """NFS says ESTALE reading chain.json: looked at again, never taken as stopped."""
    reads = iter([OSError(116, "Stale file handle"), chain.ChainState()])

    def load(_):
        value = next(reads)
        if isinstance(value, Exception):
            raise value
        return value
    monkeypatch.setattr(successor.chain, "load", load)
    k = keeper(squeue=[(0, line("20") + "\n" + line("21", "PENDING"), "")])
    assert await k.keep(None) == "21"


async def test_the_overlap_watch_skips_records_it_cannot_read(keeper, tmp_path):
    k = keeper(overlap=10)
    folder = tmp_path / endpoint.ENDPOINTS_DIR
    folder.mkdir()
    (folder / "22.json").write_text("{ half written")
    (folder / "notes.json").write_text("{}")
    watching = asyncio.ensure_future(k.watch_for_serving())
    await asyncio.sleep(0.05)
    assert not watching.done()
    watching.cancel()


async def test_a_successor_that_fits_before_maintenance_only_without_the_lead_gets_time_min(
        keeper, tmp_path):
    """Released at the warning (90 s before the end), a 5-minute successor
    ends 10 s before the reservation if it starts at once; it starts up to
    maintenance.LEAD later, so it asks for --time-min."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "slurm.sbatch").write_text("#!/bin/bash\n#SBATCH --time=5\n")
    end = float(int(time.time())) + 600
    own = Job("20", "sp-x", "RUNNING", "node1", "None", "5:00", stamp(end), "N/A")
    shown = show(end - 90 + 300 + 10)
    k = keeper(squeue=[(0, line("20") + "\n", "")], sbatch=[(0, "21\n", "")],
               scontrol=[(0, shown, "")])
    assert await k.keep(own) == "21"
    assert "--time-min=3" in next(a for a in k.slurm.calls if "sbatch" in a)
