"""The relay between two connections, on loopback with real sockets."""

import asyncio
import hashlib
import os

from remote_agent.relay import Held, relay


class Front(Held):
    """Relays its client to a fresh upstream connection; with handshake, it
    first takes one line out of what it holds, as the gate does."""

    def __init__(self, up_port: int, handshake: bool, relays: list):
        super().__init__()
        self.up_port, self.handshake, self.relays = up_port, handshake, relays

    def connection_made(self, transport):
        super().connection_made(transport)
        if not self.handshake:
            self._relay()

    def data_received(self, data):
        super().data_received(data)
        if self.handshake and b"\n" in self.buffer:
            line, _, rest = bytes(self.buffer).partition(b"\n")
            assert line == b"HELLO"
            self.buffer[:] = rest
            self.handshake = False
            self._relay()

    def _relay(self):
        async def run():
            loop = asyncio.get_running_loop()
            _, upstream = await loop.create_connection(Held, "127.0.0.1", self.up_port)
            await relay(self, upstream)
        self.relays.append(asyncio.ensure_future(run()))


async def pipe_through(upstream_handler, handshake: bool = False):
    """A front server that relays each client to a fresh upstream connection."""
    upstream = await asyncio.start_server(upstream_handler, "127.0.0.1", 0)
    up_port = upstream.sockets[0].getsockname()[1]
    relays: list = []
    server = await asyncio.get_running_loop().create_server(
        lambda: Front(up_port, handshake, relays), "127.0.0.1", 0)
    return server, upstream, server.sockets[0].getsockname()[1], relays


async def test_bytes_read_past_the_handshake_still_reach_upstream():
    seen = []

    async def echo(reader, writer):
        seen.append(await reader.read(1024))
        writer.write(b"echo:" + seen[-1])
        writer.close()

    server, upstream, port, _ = await pipe_through(echo, handshake=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"HELLO\nrequest")  # one segment: the rest sits in the front's buffer
    assert await asyncio.wait_for(reader.read(), 5) == b"echo:request"
    assert seen == [b"request"]
    server.close()
    upstream.close()


async def test_a_half_close_is_passed_on_and_the_answer_comes_back():
    async def until_eof_then_answer(reader, writer):
        body = await reader.read()  # only returns at the client's EOF
        writer.write(b"got %d" % len(body))
        writer.close()

    server, upstream, port, _ = await pipe_through(until_eof_then_answer)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"x" * 1000)
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b"got 1000"
    server.close()
    upstream.close()


async def test_megabytes_both_ways_arrive_whole_through_flow_control():
    async def echo_all(reader, writer):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.close()

    server, upstream, port, _ = await pipe_through(echo_all)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = os.urandom(20 * 2 ** 20)

    async def send():
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
    back = (await asyncio.gather(send(), asyncio.wait_for(reader.read(), 30)))[1]
    assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()
    server.close()
    upstream.close()


async def test_a_cancelled_relay_closes_both_sides():
    arrived, closed = asyncio.Event(), asyncio.Event()

    async def hold(reader, writer):
        arrived.set()
        await reader.read()  # until the relay closes this side
        closed.set()

    server, upstream, port, relays = await pipe_through(hold)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"request")
    await asyncio.wait_for(arrived.wait(), 5)
    await asyncio.sleep(0.1)
    relays[0].cancel()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    await asyncio.wait_for(closed.wait(), 5)
    server.close()
    upstream.close()


async def test_a_sender_faster_than_its_receiver_is_held_back_not_buffered():
    """Upstream reads nothing for a while: the relay must stop reading the
    client (its send blocks), not keep 20 MB in memory."""
    go = asyncio.Event()

    async def slow(reader, writer):
        await go.wait()
        while await reader.read(1 << 16):
            pass
        writer.close()

    server, upstream, port, _ = await pipe_through(slow)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(os.urandom(20 * 2 ** 20))
    drained = asyncio.ensure_future(writer.drain())
    await asyncio.sleep(1)
    assert not drained.done()
    go.set()
    await asyncio.wait_for(drained, 10)
    writer.close()
    server.close()
    upstream.close()


class Full:
    """A transport whose write buffer is over its high-water mark."""

    def __init__(self, size):
        self.size, self.reading = size, True

    def set_protocol(self, protocol):
        self.protocol = protocol

    def get_write_buffer_size(self):
        return self.size

    def get_write_buffer_limits(self):
        return 16384, 65536

    def is_closing(self):
        return False

    def is_reading(self):
        return self.reading

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True


async def test_a_destination_already_full_when_the_relay_starts_holds_the_source():
    """Its pause_writing went to the protocol that read the handshake: the
    relay must not read on until its resume_writing."""
    from remote_agent.relay import _Pair, _Side
    src, dst = Full(0), Full(1 << 20)
    side = _Side(_Pair(src, dst), src, dst, None)
    side.adopt(b"", False, False)
    assert not src.reading
    src2, dst2 = Full(0), Full(0)
    src2.reading = False  # paused by the handshake's protocol, room now
    _Side(_Pair(src2, dst2), src2, dst2, None).adopt(b"", False, False)
    assert src2.reading


async def test_relay_ends_both_sides_when_one_resets():
    """A reset upstream must not leave the client waiting for an answer."""
    async def reset_at_once(reader, writer):
        await reader.read(10)
        writer.transport.abort()

    server, upstream, port, _ = await pipe_through(reset_at_once)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")  # and then wait for an answer, like a client
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        pass  # also an immediate end, which is the point
    server.close()
    upstream.close()


def test_both_event_loops_turn_nagle_off_on_every_tcp_transport_the_relays_use():
    """The relays leave TCP_NODELAY to the loops: asyncio and uvloop set it
    on connected TCP transports, and on accepted ones when the listening
    socket says TCP (asyncio reads the proto). Nagle on a relay holds the
    second small write of an answer for a delayed ACK (40 ms)."""
    import socket

    import uvloop

    from remote_agent.listener import tcp_socket

    async def options() -> list:
        loop = asyncio.get_running_loop()
        with tcp_socket("127.0.0.1", 0) as listening:
            connected, _ = await loop.create_connection(Held, *listening.getsockname())
            conn, _ = await loop.sock_accept(listening)
            accepted, _ = await loop.connect_accepted_socket(Held, conn)
            got = [t.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                   for t in (connected, accepted)]
            connected.close()
            accepted.close()
            return got

    assert 0 not in asyncio.run(options())
    assert 0 not in uvloop.run(options())
