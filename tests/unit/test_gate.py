"""The gate, on loopback with a real upstream server."""

import asyncio
import socket
import struct

import pytest

from remote_agent import gate as gate_module
from remote_agent.gate import ACK, Gate, preamble
from remote_agent.server import Upstream

SECRET = "s3cr3t" * 4


def upstream_at(port: int):
    """The gate's upstream, as the agent's Server.connect opens it."""
    return Upstream(port=port).connect()


@pytest.fixture
async def upstream():
    seen = []

    async def echo(reader, writer):
        data = await reader.read(1024)
        seen.append(data)
        writer.write(b"echo:" + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], seen
    server.close()


async def talk(port: int, first: bytes, body: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(first + body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def acknowledged(port: int):
    """A gate before the server at port, and a connection it has acknowledged."""
    gate = Gate(SECRET, lambda: upstream_at(port))
    gate_port = await gate.start("127.0.0.1")
    reader, writer = await asyncio.open_connection("127.0.0.1", gate_port)
    writer.write(preamble(SECRET))
    await writer.drain()
    assert await reader.readline() == ACK
    return gate, gate_port, reader, writer


async def test_right_secret_is_relayed(upstream):
    port, seen = upstream
    gate = Gate(SECRET, lambda: upstream_at(port))
    gate_port = await gate.start("127.0.0.1")
    assert await talk(gate_port, preamble(SECRET), b"GET / HTTP/1.0\r\n\r\n") == \
        ACK + b"echo:GET / HTTP/1.0\r\n\r\n"
    assert seen == [b"GET / HTTP/1.0\r\n\r\n"]


@pytest.mark.parametrize("first", [b"", b"GET / HTTP/1.0\r\n", preamble("wrong" * 5),
                                   preamble(SECRET)[:-1] + b"x\n", b"SLURM-PERSIST/1 \n"])
async def test_anything_else_never_reaches_the_server(upstream, first):
    port, seen = upstream
    gate = Gate(SECRET, lambda: upstream_at(port))
    gate_port = await gate.start("127.0.0.1")
    assert await talk(gate_port, first, b"GET / HTTP/1.0\r\n\r\n") == b""
    assert seen == []
    assert gate.rejected == 1


async def test_drain_waits_for_open_connections(upstream):
    gate, gate_port, reader, writer = await acknowledged(upstream[0])
    assert gate.active == 1
    drain = asyncio.ensure_future(gate.drain(timeout=5))
    await asyncio.sleep(0.2)
    assert not drain.done()  # still waiting for our connection
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", gate_port)  # no new ones
    writer.write(b"last request")
    assert await reader.read() == b"echo:last request"
    writer.close()
    assert await drain == 0


async def test_gate_without_server_never_acknowledges():
    async def refused():
        raise ConnectionRefusedError("server gone")
    gate = Gate(SECRET, refused)
    gate_port = await gate.start("127.0.0.1")
    assert await talk(gate_port, preamble(SECRET), b"GET / HTTP/1.0\r\n\r\n") == b""


async def test_a_secret_arriving_in_pieces_is_still_the_secret(upstream):
    """A slow path may split the first line: the gate waits for all of it."""
    port, seen = upstream
    gate = Gate(SECRET, lambda: upstream_at(port))
    gate_port = await gate.start("127.0.0.1")
    reader, writer = await asyncio.open_connection("127.0.0.1", gate_port)
    line = preamble(SECRET)
    for piece in (line[:3], line[3:20], line[20:] + b"GET"):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.05)
    assert await asyncio.wait_for(reader.read(), 5) == ACK + b"echo:GET"
    assert seen == [b"GET"] and gate.rejected == 0
    writer.close()


async def test_a_connection_that_shows_no_secret_in_time_is_closed(upstream, monkeypatch):
    monkeypatch.setattr(gate_module, "HANDSHAKE_TIMEOUT", 0.2)
    port, seen = upstream
    gate = Gate(SECRET, lambda: upstream_at(port))
    gate_port = await gate.start("127.0.0.1")
    reader, writer = await asyncio.open_connection("127.0.0.1", gate_port)
    writer.write(preamble(SECRET)[:10])  # and nothing more
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert seen == [] and gate.rejected == 1 and gate.active == 0
    writer.close()


async def test_a_drain_that_times_out_ends_a_relayed_connection_with_a_fin(upstream):
    """An idle, acknowledged connection (a WebSocket, a keep-alive) past the
    drain: both of its sockets closed, the client told by a FIN."""
    gate, gate_port, reader, writer = await acknowledged(upstream[0])
    assert await gate.drain(timeout=0.1) == 1
    assert gate.active == 0
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_request_that_crashes_the_server_is_acknowledged_not_replayed():
    """The server read the request and died (a reset, well inside the wait
    for its first answer): the sender is told it was delivered, and sees
    the close, so its forwarder does not send it to the other replica."""
    seen = []

    async def crash(reader, writer):
        seen.append(await reader.read(1024))
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(crash, "127.0.0.1", 0)
    gate = Gate(SECRET, lambda: upstream_at(server.sockets[0].getsockname()[1]))
    gate_port = await gate.start("127.0.0.1")
    assert await talk(gate_port, preamble(SECRET), b"GET /crash HTTP/1.0\r\n\r\n") == ACK
    assert seen == [b"GET /crash HTTP/1.0\r\n\r\n"]
    server.close()
