"""The forwarder's recovery, branch by branch, with in-memory fakes of the
chain (SLURM and the records) and of the router (tunnels and probes)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from local.cluster import Chain
from local.conditions import ChainStopped, Home
from local.config import Options
from local.forwarder import Forwarder, NeverServed
from local.router import Router
from local.snapshot import Snapshot
from remote_agent import slots
from remote_agent.chain import ChainState
from remote_agent.endpoint import Endpoint
from remote_agent.slurm import Job, SlurmUnknown


def record(job: str, state: str = "serving", slot: int = 0) -> Endpoint:
    return Endpoint(service="x", job_id=job, node="node1", host="node1", port=4000, socket=None,
                    login_node=None, state=state, started=0.0, ends_at=None, secret="00" * 16,
                    slot=slot)


def running(job: str, slot: int = 0) -> Job:
    return Job(job, slots.job_name("sp-x", slot), "RUNNING", "node1", "None", "30:00", "N/A",
               "N/A")


def pending(job: str, slot: int = 0) -> Job:
    return Job(job, slots.job_name("sp-x", slot), "PENDING", "", "Dependency", "30:00", "N/A",
               "N/A")


class FakeSite:
    def __init__(self):
        self.failed_logins: list[str] = []
        self.lost_logins: list[str] = []

    def failed(self, login: str) -> None:
        self.failed_logins.append(login)

    def lost(self, login: str) -> None:
        self.lost_logins.append(login)

    def run(self, argv):
        class Result:
            returncode, stdout = 0, "it printed this\n"
        return Result()


class FakeChain:
    """SLURM's jobs and the service dir's records, as a test sets them."""

    def __init__(self, jobs=(), records=(), stopped: str = "", unknown: bool = False):
        self.site = FakeSite()
        self.job_list, self.stopped, self.unknown = list(jobs), stopped, unknown
        self.records = {r.job_id: r for r in records}
        self.started: list[str] = []
        self.writable = True

    def jobs(self):
        if self.unknown:
            raise SlurmUnknown("squeue exited 1: slurm_load_jobs error: Socket timed out")
        return self.job_list

    def snapshot(self) -> Snapshot:
        return Snapshot(ChainState(stopped=bool(self.stopped), reason=self.stopped), self.records)

    serving = Chain.serving  # what serves is the real rule, read from fake answers

    def slot(self, job):
        return slots.slot_of("sp-x", job.name)

    def ensure(self, only=None):
        for slot in [0] if only is None else only:
            self.started.append(str(100 + len(self.started)))
            self.job_list.append(pending(self.started[-1], slot))
        return self.started[-1], True

    def home(self):
        return Home(self.writable, "" if self.writable else "ENOSPC", "/home/a/logs", 0)

    def ended(self, job):
        return None

    def log_path(self, job):
        return f"/logs/{job}.out"


class FakeTunnel:
    def __init__(self, login: str, lost: bool = False):
        self.login, self.lost, self.alive = login, lost, not lost
        self.answering = True

    async def answers(self) -> bool:
        return self.answering


class FakeRoute:
    def __init__(self, endpoint: Endpoint, login: str = "login1", lost: bool = False):
        self.endpoint, self.tunnel = endpoint, FakeTunnel(login, lost)
        self.suspect, self.connections, self.answers = False, 0, True

    async def probe(self, session, path):
        return self.answers

    def describe(self) -> str:
        return f"job={self.endpoint.job_id}"


class FakeRouter:
    """Routes answer their probe for the jobs in `answering`."""

    def __init__(self, answering=()):
        self.answering = set(answering)
        self.routes: dict[int, FakeRoute] = {}
        self.taken: list[str] = []
        self._turn = 0

    route = Router.route
    pick = Router.pick
    check_paths = Router.check_paths
    _check = Router._check
    _site_lost = Router._site_lost

    async def candidate(self, target, session):
        return FakeRoute(target) if target.job_id in self.answering else None

    def take(self, route):
        old = self.routes.get(route.endpoint.slot)
        self.routes[route.endpoint.slot] = route
        self.taken.append(route.endpoint.job_id)
        return old

    def drop(self, route):
        self.routes.pop(route.endpoint.slot, None)

    def prewarm(self):
        self.prewarmed = getattr(self, "prewarmed", 0) + 1

    async def close(self):
        pass


@pytest.fixture
def make(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))

    def build(chain: FakeChain, answering=(), **options) -> Forwarder:
        values = dict(name="x", login_node="login1", crash_loop_jobs=3,
                      look_interval=0.01, max_looks=3)
        values.update(options)
        fwd = Forwarder(Options(**values), chain)
        fwd.router = FakeRouter(answering)
        fwd.router.site = chain.site
        return fwd
    return build


async def recover(fwd: Forwarder) -> None:
    await fwd._recover(None)


async def test_a_serving_record_of_a_running_job_is_switched_to(make):
    fwd = make(FakeChain([running("7"), pending("8")], [record("7")]), answering={"7"})
    await recover(fwd)
    assert fwd.router.taken == ["7"] and fwd.healthy.is_set()
    assert fwd.status.state == "serving" and fwd.served.ever


async def test_a_record_whose_job_is_gone_is_not_followed(make):
    fwd = make(FakeChain([pending("8")], [record("7")]), answering={"7"})
    await recover(fwd)
    assert fwd.router.taken == [] and fwd.status.state == "waiting"
    assert "job=8 state=PENDING" in fwd.status.message


async def test_no_job_at_all_starts_a_chain(make):
    chain = FakeChain([], [])
    fwd = make(chain)
    await recover(fwd)
    assert chain.started == ["100"]


async def test_unknown_never_starts_a_chain(make):
    chain = FakeChain(unknown=True)
    fwd = make(chain)
    await recover(fwd)
    assert chain.started == [] and fwd.status.state == "waiting"
    assert fwd.status.message.startswith("cluster unknown: squeue exited 1")


async def test_a_stopped_chain_ends_the_forwarder_with_its_reason(make):
    fwd = make(FakeChain([running("7")], [record("7")], stopped="stopped by down"))
    with pytest.raises(ChainStopped, match="stopped by down"):
        await recover(fwd)
    assert fwd.status.state == "stopped"


async def test_a_lost_tunnel_puts_its_login_node_last(make):
    chain = FakeChain([running("7")], [record("7")])
    fwd = make(chain, answering={"7"})
    lost = FakeRoute(record("7"), login="login1", lost=True)
    fwd.router.routes[0] = lost
    fwd._drop(lost)  # its probe failed
    await fwd.router.check_paths([lost])
    await recover(fwd)
    assert chain.site.failed_logins == ["login1"] and fwd.router.taken == ["7"]


async def test_a_failed_probe_asks_the_login_node_itself(make):
    """The master still up: a login node that runs our command stays first
    (the job failed, not the path: a scancel under load refuses clients,
    and the route is suspect), one that does not is left for commands and
    routes, its connection closed (a frozen sshd)."""
    chain = FakeChain([running("7")], [record("7")])
    fwd = make(chain, answering={"7"})
    job_ended, frozen = FakeRoute(record("7"), login="login2"), FakeRoute(record("7"))
    job_ended.suspect = True
    frozen.tunnel.answering = False
    job_ended.endpoint = record("8", slot=1)
    fwd.router.routes = {0: frozen, 1: job_ended}
    for route in (job_ended, frozen):  # their probes failed
        fwd._drop(route)
    assert not fwd.router.routes and not fwd.healthy.is_set()  # before any is asked
    await fwd.router.check_paths([job_ended, frozen])
    assert (chain.site.failed_logins, chain.site.lost_logins) == ([], ["login1"])


async def test_never_served_gives_up_after_its_attempts_but_served_once_never_does(make):
    fwd = make(FakeChain([running("7")], [record("7", "starting")]))
    with pytest.raises(NeverServed, match="after 3 attempts"):
        for _ in range(3):
            await recover(fwd)
    patient = make(FakeChain([running("7")], [record("7", "starting")]))
    patient.served.ever = True
    for _ in range(5):
        await recover(patient)
    assert patient.status.state == "waiting"


async def test_a_running_job_without_a_record_on_a_full_home_says_so(make):
    chain = FakeChain([running("7")], [])
    chain.writable = False
    fwd = make(chain)
    await recover(fwd)
    assert fwd.status.message.startswith("home not writable: ENOSPC in /home/a/logs")


async def test_a_later_job_serving_is_taken_while_the_current_one_still_answers(make):
    chain = FakeChain([running("8")], [record("7"), record("8")])
    fwd = make(chain, answering={"7", "8"})
    fwd.router.routes[0] = FakeRoute(record("7"))

    async def look():
        return await fwd.handover.later_serving({0: fwd.router.route.endpoint})
    assert [e.job_id for e in await look()] == ["8"]  # 7 is gone from SLURM: NODE_FAIL
    chain.job_list = [running("7")]
    assert (await look()) == []  # 8's record serves, SLURM runs no 8: asked once
    chain.unknown = True
    assert (await look()) == []  # and never again: no SLURM call


async def test_a_starting_job_is_followed_as_soon_as_its_record_serves(make, monkeypatch):
    """Between two looks, only the record is read, every RECORD_POLL s: no SLURM call."""
    from local import forwarder
    monkeypatch.setattr(forwarder, "RECORD_POLL", 0.01)
    chain = FakeChain([running("7")], [record("7", "starting")])
    fwd = make(chain, answering={"7"}, look_interval=30)
    await fwd._recover_once(None)
    assert fwd._starting == {"7"}
    chain.unknown = True  # any SLURM call now would fail the wait

    async def serve_soon():
        await asyncio.sleep(0.05)
        chain.records["7"] = record("7")
    started = asyncio.get_running_loop().time()
    await asyncio.gather(fwd._pause(30), serve_soon())
    assert asyncio.get_running_loop().time() - started < 1



async def test_a_queued_job_free_to_start_is_watched_too_but_not_for_ever(make, monkeypatch):
    """`up` answered 5 s after the job served: it was still queued at the
    first look, and only running jobs had their records read between looks."""
    from local import handover
    chain = FakeChain([dataclasses.replace(pending("7"), reason="Priority"), pending("8")])
    fwd = make(chain, look_interval=30)
    await fwd._recover_once(None)
    assert fwd._starting == {"7"}  # 8 waits on a dependency: nothing to watch
    monkeypatch.setattr(handover, "ELIGIBLE_WATCH", 0.0)
    await fwd._recover_once(None)
    assert fwd._starting == set()  # a long queue is left to the looks


async def test_a_chain_started_here_is_watched_from_its_first_pause(make):
    chain = FakeChain([])
    fwd = make(chain, look_interval=30)
    await fwd._recover_once(None)
    assert chain.started == ["100"] and fwd._starting == {"100"}


# -- replicas: one route per slot ------------------------------------------

async def settled(fwd: Forwarder) -> None:
    """Routes to serving slots that had none are built in the background."""
    await asyncio.gather(*fwd.refill._adopting.values())

async def test_every_slot_serving_gets_a_route(make):
    chain = FakeChain([running("7"), running("8", 1)], [record("7"), record("8", slot=1)])
    fwd = make(chain, answering={"7", "8"}, replicas=2)
    await recover(fwd)
    assert sorted(fwd.router.routes) == [0, 1] and fwd.healthy.is_set()


async def test_a_replica_failing_its_probe_is_out_at_once_and_the_other_serves_on(make):
    chain = FakeChain([running("7"), running("8", 1)], [record("7"), record("8", slot=1)])
    fwd = make(chain, answering={"7", "8"}, replicas=2, heartbeat_time=0.01)
    await recover(fwd)
    fwd.router.routes[1].answers = False  # its node stopped: the record serves on
    fwd.router.answering.discard("8")
    await fwd._heartbeat(None)
    await settled(fwd)
    assert list(fwd.router.routes) == [0] and fwd.healthy.is_set()
    assert fwd.status.state == "serving"
    fwd.router.answering.add("8")
    await fwd._heartbeat(None)  # not tried again at once: a probe can take 10 s
    await settled(fwd)
    assert list(fwd.router.routes) == [0]


async def test_a_replica_serving_again_is_taken_back_while_the_other_serves(make):
    chain = FakeChain([running("7"), running("9", 1)], [record("7"), record("9", slot=1)])
    fwd = make(chain, answering={"7", "9"}, replicas=2, heartbeat_time=0.01)
    fwd.router.routes[0] = FakeRoute(record("7"))
    fwd.healthy.set()
    await fwd._heartbeat(None)
    await settled(fwd)  # built in the background: the heartbeat goes on
    assert sorted(fwd.router.routes) == [0, 1] and fwd.router.taken == ["9"]


async def test_a_slot_with_no_job_left_is_started_again_then_given_up(make, monkeypatch):
    from local import refill
    monkeypatch.setattr(refill, "LOOK_EVERY", 0)
    chain = FakeChain([running("7")], [record("7")])
    fwd = make(chain, answering={"7"}, replicas=2, heartbeat_time=0.01)
    fwd.router.routes[0] = FakeRoute(record("7"))
    for _ in range(5):  # slot 1's jobs die before serving, each time
        await fwd._heartbeat(None)
        chain.job_list = [running("7")]
    assert len(chain.started) == 3 and fwd.refill.given_up == {1}
    assert list(fwd.router.routes) == [0]


async def test_a_later_job_of_another_slot_is_no_handover(make):
    chain = FakeChain([running("7"), running("8", 1)], [record("7"), record("8", slot=1)])
    fwd = make(chain, answering={"7", "8"}, replicas=2)
    targets = await fwd.handover.later_serving({0: record("7"), 1: record("8", slot=1)}, 2)
    assert targets == []


def test_new_connections_go_to_the_least_loaded_clear_route():
    router = FakeRouter()
    a, b = FakeRoute(record("7")), FakeRoute(record("8", slot=1))
    router.routes = {0: a, 1: b}
    a.connections, b.connections = 3, 1
    assert router.pick(set()) is b
    b.suspect = True  # a connection just failed on it
    assert router.pick(set()) is a
    assert router.pick({a}) is b and router.pick({a, b}) is None
    a.connections = b.connections = 0
    b.suspect = False
    assert {router.pick(set()), router.pick(set())} == {a, b}  # equals take turns


async def test_a_later_job_of_the_same_slot_takes_over_its_route(make):
    chain = FakeChain([running("7"), running("9"), running("8", 1)],
                      [record("7"), record("9"), record("8", slot=1)])
    fwd = make(chain, answering={"7", "8", "9"}, replicas=2, heartbeat_time=0.01)
    fwd.router.routes = {0: FakeRoute(record("7")), 1: FakeRoute(record("8", slot=1))}
    fwd.healthy.set()
    await fwd._heartbeat(None)
    assert fwd.router.routes[0].endpoint.job_id == "9" and fwd.router.taken == ["9"]


async def test_near_its_end_with_no_successor_of_its_own_slot_it_tells_once(make):
    from local.hooks import Hooks
    told: list[tuple] = []
    chain = FakeChain([running("7"), pending("8", 1)], [record("7")])
    fwd = make(chain, replicas=2)
    fwd.handover.hooks = type("Told", (Hooks,), {"emit": lambda self, e, **kw: told.append(
        (e, kw["job"]))})("", "x")
    ending = dataclasses.replace(record("7"), ends_at=time.time() + 60)
    await fwd.handover.warn_near_end(ending)  # 8 is slot 1's, not a successor of 7
    await fwd.handover.warn_near_end(ending)  # told once per job
    assert told == [("time-limit-near", "7")]
    chain.job_list.append(pending("9"))
    later = dataclasses.replace(record("9"), ends_at=time.time() + 60)
    await fwd.handover.warn_near_end(dataclasses.replace(later, job_id="10"))
    assert len(told) == 2
    quiet = make(FakeChain([running("7"), pending("8")], [record("7")]))
    await quiet.handover.warn_near_end(ending)  # its successor is queued: nothing to tell
    assert len(told) == 2


async def test_a_new_job_after_a_failed_probe_is_a_switch_not_a_first_serving(make):
    """The failed probe drops the route first: the switch is told from the
    slot's last job (seen: the scancel fault test got two `serving` events)."""
    chain = FakeChain([running("7")], [record("7")])
    fwd = make(chain, answering={"7", "8"})
    await recover(fwd)
    fwd._drop(fwd.router.routes[0])  # 7 scancelled: its probe failed
    chain.job_list, chain.records = [running("8")], {"8": record("8")}
    await recover(fwd)
    assert fwd.router.taken == ["7", "8"] and fwd.status.switches == 1
