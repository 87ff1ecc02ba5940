"""The forwarder's bookkeeping of ssh forwards and upstream connections,
with in-memory stand-ins for the tunnel and the gate; the real ones are
tested on the docker cluster."""

import asyncio
import socket
from pathlib import Path

import aiohttp
import pytest

from local import connection, forwarder, route
from local.config import Options
from local.connection import ClientGone, Connection
from remote_agent.endpoint import Endpoint
from remote_agent.gate import ACK, Acknowledgement, NotAcknowledged


@pytest.fixture(autouse=True)
def private_state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()


class FakeTunnel:
    """Forwards to sockets nobody listens on: every probe through them fails."""

    def __init__(self, login: str, directory: Path):
        self.login, self.directory, self.alive = login, directory, True
        self.forwards, self.cancelled = [], []

    async def forward(self, remote: str) -> Path:
        path = self.directory / f"{self.login}-f{len(self.forwards)}.sock"
        self.forwards.append(path)
        return path

    async def cancel(self, path: Path, remote: str) -> None:
        self.cancelled.append(path)


class FakeSite:
    def order(self):
        return ["login1", "login2"]

    def failed(self, host):
        pass


def target() -> Endpoint:
    return Endpoint(service="hpc", job_id="12", node="node1", host="node1", port=4000,
                    socket=None, login_node=None, state="serving", started=0.0, ends_at=None,
                    secret="00" * 16)


def test_a_candidate_that_fails_its_probe_leaves_no_forward_behind(tmp_path, monkeypatch):
    fwd = forwarder.Forwarder(Options(login_node="login1", fallback_login_nodes=["login2"]),
                              type("Chain", (), {"site": FakeSite()})())
    tunnels = {}

    async def tunnel(login, slot=0):
        return tunnels.setdefault(login, FakeTunnel(login, tmp_path))
    monkeypatch.setattr(fwd.router, "tunnel", tunnel)

    async def switch():
        async with aiohttp.ClientSession() as session:
            return await fwd._switch(target(), session)
    assert asyncio.run(switch()) is False
    for t in tunnels.values():
        assert t.forwards and t.cancelled == t.forwards, t.login


class Transport:
    """Stands in for a socket's transport: records writes, can be closed."""

    def __init__(self, strict: bool = False):
        self.written, self.closed, self.strict, self.reading = bytearray(), False, strict, True

    def write(self, data):
        if self.closed and self.strict:  # as uvloop does
            raise RuntimeError("unable to perform operation: the handler is closed")
        self.written += data

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = self.aborted = True

    def pause_reading(self):
        self.reading = False

    def get_extra_info(self, name, default=None):
        return default


def client_of(data: bytes = b"") -> Connection:
    """A client connection that has sent data, with no handler task."""
    client = Connection(lambda _: asyncio.sleep(0))
    client.transport = Transport()  # type: ignore[assignment]
    if data:
        client.data_received(data)
    return client


def silent_gate(strict: bool = False) -> Acknowledgement:
    upstream = Acknowledgement()
    upstream.connection_made(Transport(strict))  # type: ignore[arg-type]
    return upstream


async def entering_a_silent_gate(strict: bool = False):
    """A client that sent GET, entering a gate that has not answered yet."""
    client, upstream = client_of(b"GET"), silent_gate(strict)
    entering = asyncio.ensure_future(client.enter(upstream, b"HELLO\n"))
    await asyncio.sleep(0)
    return client, upstream, entering


def test_the_upstream_is_closed_when_the_gate_never_acknowledges(monkeypatch):
    monkeypatch.setattr(connection, "ACK_TIMEOUT", 0.1)

    async def run():
        upstream = silent_gate()
        with pytest.raises(asyncio.TimeoutError):
            await client_of(b"GET").enter(upstream, b"HELLO\n")
        return upstream
    upstream = asyncio.run(run())
    assert upstream.transport.closed and upstream.transport.written == b"HELLO\nGET"


async def test_client_bytes_arriving_as_the_ack_fails_are_kept_for_a_retry():
    """Both in the same pass of the loop. Seen with 9,500 clients on uvloop,
    which raises on a write after close: the client was dropped instead of
    tried again."""
    client, upstream, entering = await entering_a_silent_gate(strict=True)
    upstream.transport.close()
    upstream.connection_lost(None)
    client.data_received(b" /more")
    with pytest.raises(NotAcknowledged):
        await entering
    assert client.sent == b"GET /more"


async def test_the_upstream_is_closed_when_the_client_fails_before_the_ack():
    client, upstream, entering = await entering_a_silent_gate()
    client.connection_lost(ConnectionResetError("reset by peer"))
    with pytest.raises(ClientGone):
        await entering
    assert upstream.transport.closed


async def test_bytes_after_the_ack_stay_for_the_relay_and_later_client_bytes_go_on():
    client, upstream, entering = await entering_a_silent_gate()
    client.data_received(b" /x")
    upstream.data_received(ACK[:5])
    assert not entering.done()
    upstream.data_received(ACK[5:] + b"HTTP/1.1 200")
    await entering
    assert upstream.transport.written == b"HELLO\nGET /x"
    assert upstream.take() == (b"HTTP/1.1 200", False, False)


async def test_a_gate_answering_anything_else_is_not_an_ack():
    client, upstream, entering = await entering_a_silent_gate()
    upstream.data_received(b"SSH-2.0-OpenSSH\r\n")
    with pytest.raises(NotAcknowledged):
        await entering
    assert upstream.transport.closed


class GateSocket:
    """A Unix socket that acknowledges every connection and then holds it."""

    def __init__(self, path: Path):
        self.path, self.held = path, []

    async def start(self, acknowledge: bool = True):
        async def accept(reader, writer):
            await reader.readline()
            if acknowledge:
                writer.write(ACK)
            self.held.append(writer)
        self.server = await asyncio.start_unix_server(accept, str(self.path))


class LaneTunnel(FakeTunnel):
    """A tunnel whose forward is a real socket with a gate behind it."""

    made = 0

    async def forward(self, remote: str) -> Path:
        path = await super().forward(remote)
        await GateSocket(path).start()
        return path

    async def close(self):
        self.alive = False


async def fill_lanes(tmp_path, count: int):
    first = LaneTunnel("login1", tmp_path / "a")
    (tmp_path / "a").mkdir()
    extra = []

    async def widen():
        directory = tmp_path / f"x{len(extra)}"
        directory.mkdir()
        extra.append(LaneTunnel("login1", directory))
        return extra[-1]

    r = route.Route(target(), first, await first.forward("node1:4000"), widen=widen)
    entered = []
    for _ in range(count):
        entered.append(await r.enter(client_of()))
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)
    return r, entered, extra


def test_a_full_lane_opens_another_master_and_new_connections_go_there(tmp_path, monkeypatch):
    monkeypatch.setattr(route, "LANE_CHANNELS", 5)

    async def run():
        r, entered, extra = await fill_lanes(tmp_path, 12)
        counts = [lane.connections for lane in r.lanes]
        for upstream, lane in entered:
            upstream.transport.close()
            r._left(lane)
        await r.retire()
        return r, counts, extra
    r, counts, extra = asyncio.run(run())
    assert len(r.lanes) >= 2 and sum(counts) == 12 and max(counts) <= 6
    assert all(not t.alive for t in extra)  # the route's own masters end with it
    assert r.lanes[0].tunnel.alive  # the shared one stays for the next route


def test_a_lane_past_full_waits_for_the_next_master_instead_of_overfilling(tmp_path, monkeypatch):
    """Clients arriving at once while the next master starts: sshd refuses
    channels near its 1024 descriptors, so past LANE_FULL they wait for it."""
    monkeypatch.setattr(route, "LANE_CHANNELS", 3)
    monkeypatch.setattr(route, "LANE_FULL", 5)

    async def run():
        first = LaneTunnel("login1", tmp_path / "a")
        (tmp_path / "a").mkdir()

        async def widen():
            await asyncio.sleep(0.3)  # a master takes a while to start
            (tmp_path / "b").mkdir()
            return LaneTunnel("login1", tmp_path / "b")

        r = route.Route(target(), first, await first.forward("node1:4000"), widen=widen)
        entered = await asyncio.gather(*(r.enter(client_of()) for _ in range(9)))
        counts = [lane.connections for lane in r.lanes]
        for upstream, lane in entered:
            upstream.transport.close()
            r._left(lane)
        await r.retire()
        return counts
    counts = asyncio.run(run())
    assert len(counts) == 2 and sum(counts) == 9 and max(counts) <= 5


async def test_a_client_gone_before_the_ack_is_not_sent_again():
    """Retried, its request would reach the server once per try, for nobody."""
    from local.clients import Clients
    from local.metrics import Metrics

    class GoneRoute:
        entered = 0

        async def enter(self, client):
            self.entered += 1
            raise ClientGone("reset by peer")

        def describe(self):
            return "job=12"

    healthy = asyncio.Event()
    healthy.set()
    gone, metrics = GoneRoute(), Metrics("x")
    clients = Clients(5, healthy, lambda tried: gone, lambda: None, metrics, forwarder.Summariser(
        lambda line: None))
    await asyncio.wait_for(clients.serve(client_of(b"POST /order HTTP/1.1\r\n\r\n")), 2)
    assert gone.entered == 1 and metrics.failed._value.get() == 1


async def test_a_connection_failing_on_one_replica_goes_to_the_other_at_once():
    """Not yet acknowledged, its bytes cannot have reached a server: replayed
    on the other replica, with no RETRY_PAUSE, and the failed one is suspect."""
    from local.clients import RETRY_PAUSE, Clients
    from local.metrics import Metrics
    from local.router import Router

    class Replica:
        def __init__(self, slot, fails):
            self.slot, self.fails, self.got = slot, fails, []
            self.suspect, self.connections = False, 0

        async def enter(self, client):
            self.got.append(bytes(client.sent))
            if self.fails:
                raise ConnectionRefusedError("the node is gone")
            return "upstream", "lane"

        async def carry(self, client, upstream, lane, counts):
            pass

        def describe(self):
            return f"slot={self.slot}"

    dead, live = Replica(0, fails=True), Replica(1, fails=False)

    class Two:
        routes, _turn = {0: dead, 1: live}, 1
        pick = Router.pick
    healthy = asyncio.Event()
    healthy.set()
    clients = Clients(5, healthy, Two().pick, lambda: None, Metrics("x"),
                      forwarder.Summariser(lambda line: None))
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(clients.serve(client_of(b"GET / HTTP/1.1\r\n\r\n")), 2)
    assert dead.got == live.got == [b"GET / HTTP/1.1\r\n\r\n"] and dead.suspect
    assert asyncio.get_running_loop().time() - started < RETRY_PAUSE


async def test_a_connection_waiting_on_a_dropped_route_goes_elsewhere_at_once(tmp_path):
    """No ack yet, and the route's probe failed while another replica serves."""
    gate = GateSocket(tmp_path / "gate.sock")
    await gate.start(acknowledge=False)
    r = route.Route(target(), FakeTunnel("login1", tmp_path), gate.path)
    waiting = asyncio.ensure_future(r.enter(client_of(b"GET / HTTP/1.1\r\n\r\n")))
    await asyncio.sleep(0.1)
    assert not waiting.done() and len(gate.held) == 1
    r.abandon()
    with pytest.raises(NotAcknowledged):
        await asyncio.wait_for(waiting, 1)
    assert r.connections == 0
    gate.server.close()


async def test_a_client_waiting_on_the_only_route_when_it_is_dropped_waits_for_the_next(
        tmp_path):
    """Its probe failed, no other replica serves: the connection waiting for
    the ack leaves it at once and is held for the next route, instead of
    waiting out the gate's 15 s (or, queued behind others, the dead ssh
    master's own end: 36-40 s on the sandbox)."""
    from local.clients import Clients
    from local.metrics import Metrics
    from local.router import Router

    silent, answering = GateSocket(tmp_path / "silent.sock"), GateSocket(tmp_path / "ok.sock")
    await silent.start(acknowledge=False)
    await answering.start()
    router = Router(Options(login_node="login1"), FakeSite(), tmp_path)
    dead = route.Route(target(), FakeTunnel("login1", tmp_path), silent.path)
    router.routes[0] = dead
    healthy = asyncio.Event()
    healthy.set()
    clients = Clients(30, healthy, router.pick, lambda: None, Metrics("held"),
                      forwarder.Summariser(lambda line: None))
    ours, theirs = socket.socketpair()
    theirs.sendall(b"GET / HTTP/1.1\r\n\r\n")
    await asyncio.get_running_loop().connect_accepted_socket(
        lambda: Connection(clients.serve), ours)
    await until(lambda: silent.held)
    router.drop(dead)
    healthy.clear()  # as the forwarder does once no route is left
    router.routes[0] = route.Route(target(), FakeTunnel("login1", tmp_path), answering.path)
    healthy.set()
    await asyncio.wait_for(until(lambda: answering.held), 2)
    theirs.close()
    answering.held[0].close()
    await asyncio.wait_for(until(lambda: not clients.tasks), 2)
    silent.server.close()
    answering.server.close()


async def until(condition) -> None:
    while not condition():  # noqa: ASYNC110 - a fake gate's list, no event to wait on
        await asyncio.sleep(0.01)


async def test_a_master_started_ahead_is_the_one_the_route_gets(tmp_path, monkeypatch):
    """prewarm while a job is on its way, then the route asks: one start."""
    from local import router as router_module

    started = []

    class SlowTunnel(FakeTunnel):
        def __init__(self, options, login, control, on_lost):
            super().__init__(login, control.parent)

        async def start(self):
            started.append(self.login)
            await asyncio.sleep(0.1)

    monkeypatch.setattr(router_module, "Tunnel", SlowTunnel)
    r = router_module.Router(Options(login_node="login1", fallback_login_nodes=["login2"]),
                             FakeSite(), tmp_path)
    r.prewarm()
    await asyncio.sleep(0.01)
    r.prewarm()  # still starting: not a second one
    first, second = await asyncio.gather(r.tunnel("login1"), r.tunnel("login1"))
    assert started == ["login1"] and first is second
    first.alive = False  # lost: the next ask starts a new one and closes the old
    closed = []
    first.close = lambda: asyncio.sleep(0, closed.append(first))
    assert await r.tunnel("login1") is not first and closed == [first]
    assert started == ["login1", "login1"]


async def test_a_lost_master_is_told_to_the_site_and_to_the_heartbeat(tmp_path, monkeypatch):
    """What the router's masters report: the site closes its connection to
    that login node (test_local shows why), and the heartbeat is kicked."""
    from local import router as router_module

    class TellingTunnel(FakeTunnel):
        def __init__(self, options, login, control, on_lost):
            super().__init__(login, control.parent)
            self.on_lost = on_lost

        async def start(self):
            pass

    told, kicks = [], []

    class Site(FakeSite):
        def lost(self, host):
            told.append(host)

    monkeypatch.setattr(router_module, "Tunnel", TellingTunnel)
    r = router_module.Router(Options(login_node="login1", fallback_login_nodes=["login2"]),
                             Site(), tmp_path, lambda: kicks.append(1))
    (await r.tunnel("login2", slot=1)).on_lost("login2")
    assert kicks == [1]
    await asyncio.wait_for(until(lambda: told == ["login2"]), 2)  # from a thread
    (await r.extra_tunnel("login1")).on_lost("login1")
    await asyncio.wait_for(until(lambda: told == ["login2", "login1"]), 2)
    assert kicks == [1, 1]


async def test_a_client_gone_while_held_opens_no_channel(tmp_path):
    gate = GateSocket(tmp_path / "gate.sock")
    await gate.start()
    r = route.Route(target(), FakeTunnel("login1", tmp_path), gate.path)
    client = client_of(b"GET / HTTP/1.1\r\n\r\n")
    client.connection_lost(ConnectionResetError("reset by peer"))
    with pytest.raises(ClientGone):
        await r.enter(client)
    await asyncio.sleep(0.05)
    assert gate.held == [] and r.connections == 0
    gate.server.close()


async def test_what_a_gate_given_up_on_still_buffers_is_dropped_not_sent():
    client, upstream, entering = await entering_a_silent_gate()
    upstream.fail(NotAcknowledged("route dropped"))
    with pytest.raises(NotAcknowledged):
        await entering
    assert upstream.transport.aborted
