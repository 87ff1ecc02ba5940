"""The forwarder's bookkeeping of ssh forwards and upstream connections,
with in-memory stand-ins for the tunnel and the gate; the real ones are
tested on the docker cluster."""

import asyncio
from pathlib import Path

import aiohttp
import pytest

from local import forwarder
from local.config import Options
from remote_agent.endpoint import Endpoint


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
    fwd = forwarder.Forwarder(Options(hpc_system_url="login1", fallback_system_url=["login2"]),
                              type("Chain", (), {"site": FakeSite()})())
    tunnels = {}

    async def tunnel(login):
        return tunnels.setdefault(login, FakeTunnel(login, tmp_path))
    monkeypatch.setattr(fwd, "_tunnel", tunnel)

    async def switch():
        async with aiohttp.ClientSession() as session:
            return await fwd._switch(target(), session)
    assert asyncio.run(switch()) is False
    for t in tunnels.values():
        assert t.forwards and t.cancelled == t.forwards, t.login


class Upstream:
    """The gate's side of one connection: it never acknowledges."""

    def __init__(self):
        self.closed = False

    def write(self, data):
        pass

    def close(self):
        self.closed = True


async def until_ack(client_fault=None):
    fwd = forwarder.Forwarder(Options(hpc_system_url="login1"), None)
    client = asyncio.StreamReader()
    if client_fault:
        client.set_exception(client_fault)
    writer = Upstream()
    with pytest.raises((OSError, asyncio.TimeoutError)):
        await fwd._until_ack(client, (asyncio.StreamReader(), writer), bytearray())
    return writer


def test_the_upstream_is_closed_when_the_gate_never_acknowledges(monkeypatch):
    monkeypatch.setattr(forwarder, "ACK_TIMEOUT", 0.1)
    assert asyncio.run(until_ack()).closed


def test_the_upstream_is_closed_when_the_client_fails_before_the_ack():
    assert asyncio.run(until_ack(ConnectionResetError("reset by peer"))).closed
