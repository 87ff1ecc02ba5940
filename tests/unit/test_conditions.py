"""The forwarder's choice between waiting out the cluster and stopping a
crash loop, driven by a fake chain (no SLURM, no ssh): seconds, not minutes."""

from __future__ import annotations

import pytest

from local import conditions
from local.conditions import Home
from local.config import Options
from local.forwarder import ChainStopped, Forwarder
from remote_agent.slurm import Job


class FakeSite:
    def run(self, argv):
        class Result:
            returncode, stdout = 0, "module load python/9.9: no such module\n"
        return Result()


class FakeChain:
    """A chain whose jobs all end unserved; the home full for `full` more looks."""

    def __init__(self, full: int = 0, state: str = "FAILED"):
        self.site, self.full, self.state = FakeSite(), full, state
        self.started: list[str] = []
        self.home_checks = 0

    def home(self) -> Home:
        self.home_checks += 1
        if self.full > 0:
            self.full -= 1
            return Home(False, "ENOSPC", "/home/alice/x/logs", 0)
        return Home(True)

    def ended(self, job: str) -> Job:
        return Job(job, "sp-x", self.state, "node1", "None", "5:00", "N/A", "N/A")

    def log_path(self, job: str) -> str:
        return f"/logs/{job}.out"

    def ensure(self):
        self.started.append(str(len(self.started) + 1))
        return self.started[-1], True


@pytest.fixture
def forwarder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(conditions, "HOME_RECHECK", 0.01)

    def make(chain: FakeChain) -> Forwarder:
        fwd = Forwarder(Options(name="x", login_node="login1", crash_loop_jobs=3), chain)
        fwd.conditions.backoff = conditions.Backoff(first=0.01, cap=0.04)
        return fwd
    return make


async def test_a_full_home_is_waited_out_for_as_long_as_it_lasts(forwarder):
    chain = FakeChain(full=10**6)
    fwd = forwarder(chain)
    for _ in range(8):  # far more than crash_loop_jobs: never stopped
        await fwd._start_chain()
    assert fwd.served.unserved_chains == 1  # only the very first start counts, as before
    assert len(chain.started) == 8
    assert fwd.status.state == "waiting" and "ENOSPC" in fwd.status.message
    assert fwd.conditions.backoff.tries == 7


async def test_a_node_failure_backs_off_without_counting(forwarder):
    fwd = forwarder(FakeChain(state="NODE_FAIL"))
    for _ in range(5):
        await fwd._start_chain()
    assert fwd.served.unserved_chains == 1 and "NODE_FAIL" in fwd.status.message


async def test_a_service_that_never_serves_is_stopped_with_its_reason(forwarder):
    chain = FakeChain()
    fwd = forwarder(chain)
    with pytest.raises(ChainStopped) as stopped:
        for _ in range(5):
            await fwd._start_chain()
    assert len(chain.started) == 2
    assert "3 chains in a row ended without serving" in str(stopped.value)
    assert "module load python/9.9" in str(stopped.value)
    assert fwd.status.state == "stopped"


async def test_the_home_is_looked_at_again_while_waiting(forwarder):
    chain = FakeChain(full=3)
    fwd = forwarder(chain)
    fwd.conditions.backoff = conditions.Backoff(first=60, cap=60)
    await fwd._start_chain()  # the first start: nothing to ask
    fwd.starter.started_job = "1"
    await fwd._start_chain()  # full: waits, but the recheck sees it writable
    assert chain.home_checks >= 2 and len(chain.started) == 2
