"""The agent's bookkeeping on the shared service dir, without SLURM: which
records it removes, and what it leaves of the chain's state."""

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from remote_agent import __main__ as agent_main
from remote_agent import chain, endpoint, joblog, slurm
from remote_agent.agent import TIME_LIMIT_NEAR, Agent
from remote_agent.spec import Spec


@pytest.fixture
def agent(tmp_path):
    spec = Spec(name="hpc", job_name="sp-hpc", service_dir=str(tmp_path),
                app_dir=str(tmp_path / "app"), agent_dir=str(tmp_path / "agent"))
    made = Agent(spec, "20", "node1", "alice")
    yield made
    shutil.rmtree(made._private, ignore_errors=True)


def job(job_id: str) -> slurm.Job:
    return slurm.Job(job_id, "sp-hpc", "RUNNING", "node1", "None", "30:00", "N/A", "N/A")


def records(agent: Agent) -> Path:
    folder = agent.service_dir / endpoint.ENDPOINTS_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def test_stale_records_go_but_another_jobs_temp_file_stays(agent):
    folder = records(agent)
    for name in ("12.json", "20.json", "21.json", ".tmp-k3j9x.json"):
        (folder / name).write_text("{}")
    agent.keeper.clean_stale([job("20"), job("21")])
    assert sorted(p.name for p in folder.iterdir()) == [".tmp-k3j9x.json", "20.json", "21.json"]


def test_a_record_removed_meanwhile_by_its_own_job_is_no_error(agent, monkeypatch):
    folder = records(agent)
    # The other job's own endpoint.remove wins the race between glob and unlink.
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter([folder / "12.json"]))
    agent.keeper.clean_stale([job("20")])


def test_reaching_serving_keeps_a_stop_mark_down_set_meanwhile(agent, monkeypatch):
    chain.save(agent.service_dir, chain.ChainState(failed_jobs=2))

    async def healthy_while_down_runs():
        chain.save(agent.service_dir, chain.ChainState(2, True, "stopped by down"))
        return True

    async def nothing(*args):
        return None

    async def yes():
        return True

    # Everything around the moment of serving is SLURM's or the server's: left out.
    for name, fake in (("_open_gate", yes), ("_supervise", nothing), ("_shutdown", nothing)):
        monkeypatch.setattr(agent, name, fake)
    monkeypatch.setattr(agent.keeper, "own_job", nothing)
    monkeypatch.setattr(agent.keeper, "keep", nothing)
    monkeypatch.setattr(agent.server, "start_healthy", healthy_while_down_runs)
    monkeypatch.setattr(agent, "_install_signals", lambda: None)
    monkeypatch.setattr(agent, "_publish", lambda state: None)
    assert asyncio.run(agent.run()) == 0
    assert chain.load(agent.service_dir) == chain.ChainState(0, True, "stopped by down")


def test_the_agent_is_built_and_run_inside_one_running_loop(tmp_path, monkeypatch):
    """On 3.8/3.9 an asyncio.Event binds the loop current when it is built;
    get_event_loop() outside a loop is deprecated (3.12) and gone (3.14)."""
    spec = Spec(name="hpc", job_name="sp-hpc", service_dir=str(tmp_path),
                app_dir=str(tmp_path / "app"), agent_dir=str(tmp_path / "agent"))
    (tmp_path / "spec.json").write_text(spec.dumps())
    loops = []

    class Recorder:
        def __init__(self, *args):
            loops.append(asyncio.get_running_loop())

        async def run(self):
            loops.append(asyncio.get_running_loop())
            return 0

    monkeypatch.setattr(agent_main, "Agent", Recorder)
    monkeypatch.setenv("SLURM_JOB_ID", "20")
    assert agent_main.job(tmp_path) == 0
    assert len(loops) == 2 and loops[0] is loops[1] and loops[0].is_closed()


def test_show_skips_a_record_being_written(agent, capsys):
    import json
    folder = records(agent)
    (folder / ".tmp-k3j9x.json").write_text('{"half": ')
    assert agent_main.show(agent.service_dir) == 0
    assert json.loads(capsys.readouterr().out)["errors"] == {}


def test_a_server_that_fails_at_once_still_leaves_a_successor(agent, monkeypatch):
    """The next job carries the chain on and is what the crash-loop guard
    counts: the failed job waits for its sbatch instead of cancelling it."""
    submitted = []

    async def slow_sbatch(own):
        await asyncio.sleep(0.2)  # squeue + sbatch outlast a server that exits in 10 ms
        submitted.append("21")
        return "21"

    async def nothing(*args):
        return None

    async def yes():
        return True

    async def never_healthy():
        return False

    for name, fake in (("_open_gate", yes),):
        monkeypatch.setattr(agent, name, fake)
    monkeypatch.setattr(agent.keeper, "own_job", nothing)
    monkeypatch.setattr(agent.keeper, "keep", slow_sbatch)
    monkeypatch.setattr(agent.server, "start_healthy", never_healthy)
    monkeypatch.setattr(agent.server, "stop", nothing)
    monkeypatch.setattr(agent, "_install_signals", lambda: None)
    monkeypatch.setattr(agent, "_publish", lambda state: None)
    assert asyncio.run(agent.run()) == 1
    assert submitted == ["21"]
    assert chain.load(agent.service_dir) == chain.ChainState(failed_jobs=1)


def test_a_draining_job_stops_accepting_before_it_says_so_or_releases_its_successor(
        agent, monkeypatch):
    seen = []

    async def release(keeping):
        seen.append("release")
        return True

    async def drained(timeout):
        return 0

    async def nothing():
        return None

    monkeypatch.setattr(agent.gate, "stop_accepting", lambda: seen.append("stop accepting"))
    monkeypatch.setattr(agent.gate, "drain", drained)
    monkeypatch.setattr(agent.keeper, "release", release)
    monkeypatch.setattr(agent, "_publish", lambda state: seen.append(state))
    monkeypatch.setattr(agent, "_clean_up", nothing)
    agent.stop_reason = TIME_LIMIT_NEAR

    async def shut_down():
        await agent._shutdown(asyncio.ensure_future(nothing()))

    asyncio.run(shut_down())
    assert seen[:3] == ["stop accepting", "draining", "release"]


def write_logs(folder: Path, sizes: dict) -> None:
    """job id -> bytes, each written a second after the one before."""
    folder.mkdir(exist_ok=True)
    for second, (job_id, size) in enumerate(sizes.items()):
        (folder / f"{job_id}.out").write_bytes(b"x" * size)
        os.utime(folder / f"{job_id}.out", (1_000_000 + second,) * 2)


def test_ended_jobs_logs_past_the_newest_few_go(agent):
    folder = agent.service_dir / "logs"
    write_logs(folder, {str(job_id): 1 for job_id in range(100, 130)})
    (folder / "sp-doctor.out").write_text("not a job's")
    agent.keeper.clean_stale([job("105"), job("129")])  # 105 runs still: a replica, say
    left = sorted(p.name for p in folder.iterdir())
    # 129 and 105 run; of the 28 ended, the newest 20 (128 down to 109) stay.
    assert left == sorted(["sp-doctor.out", "105.out", "129.out"]
                          + [f"{i}.out" for i in range(109, 129)]), left


def test_ended_jobs_logs_are_kept_within_a_byte_budget_the_newest_always(tmp_path):
    write_logs(tmp_path, {"7": 300, "8": 50, "9": 60, "10": 500})
    # 10 (500 bytes) is the newest: kept over budget. 9 takes it past 100.
    assert joblog.prune(tmp_path, alive={"11"}, keep=20, keep_bytes=100) == ["9", "8", "7"]
    assert [p.name for p in tmp_path.iterdir()] == ["10.out"]


def test_the_newest_logs_stay_when_job_ids_start_again_from_1(tmp_path):
    write_logs(tmp_path, {"67043327": 1, "67043328": 1, "1": 1, "2": 1})
    assert joblog.prune(tmp_path, alive={"3"}, keep=2) == ["67043328", "67043327"]
