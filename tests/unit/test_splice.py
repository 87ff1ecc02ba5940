"""The gate's relay of two raw sockets, on real socket pairs."""

import asyncio
import hashlib
import os
import socket

from remote_agent.splice import Splice


class Ends:
    """client <-> a ==Splice== b <-> server: the test holds client and server."""

    def __init__(self, greeting: bytes = b"", first: bytes = b"", buffer: int = 0):
        self.client, a = socket.socketpair()
        b, self.server = socket.socketpair()
        for sock in (self.client, a, b, self.server):
            sock.setblocking(False)
            if buffer:  # small buffers: flow control within a few reads
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        self.a, self.b = a, b
        self.splice = Splice(a, b, greeting=greeting, first=first)

    async def read_all(self, sock: socket.socket) -> bytes:
        loop, got = asyncio.get_running_loop(), bytearray()
        while True:
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
            if not data:
                return bytes(got)
            got += data

    def close(self) -> None:
        self.client.close()
        self.server.close()


async def test_first_bytes_then_both_ways_then_half_closes_end_it():
    ends = Ends(first=b"GET / ")
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(ends.client, b"HTTP/1.0\r\n\r\n")
    ends.client.shutdown(socket.SHUT_WR)
    assert await ends.read_all(ends.server) == b"GET / HTTP/1.0\r\n\r\n"
    await loop.sock_sendall(ends.server, b"answer")  # the other way still carries
    ends.server.shutdown(socket.SHUT_WR)
    assert await ends.read_all(ends.client) == b"answer"
    await asyncio.wait_for(ends.splice.done, 5)
    assert ends.a.fileno() == -1 and ends.b.fileno() == -1
    ends.close()


async def test_the_greeting_goes_first_with_the_first_answer_or_alone():
    loop = asyncio.get_running_loop()
    ends = Ends(greeting=b"OK\n")
    await loop.sock_sendall(ends.server, b"hello")
    assert await asyncio.wait_for(loop.sock_recv(ends.client, 100), 5) == b"OK\nhello"
    ends.close()

    ends = Ends(greeting=b"OK\n")  # nothing from the server within COALESCE
    assert await asyncio.wait_for(loop.sock_recv(ends.client, 100), 5) == b"OK\n"
    await loop.sock_sendall(ends.server, b"later")
    assert await asyncio.wait_for(loop.sock_recv(ends.client, 100), 5) == b"later"
    ends.close()


async def test_a_server_that_ends_without_a_byte_still_sends_the_greeting():
    ends = Ends(greeting=b"OK\n")
    ends.server.shutdown(socket.SHUT_WR)
    assert await ends.read_all(ends.client) == b"OK\n"
    ends.close()


async def test_megabytes_both_ways_arrive_whole_through_flow_control():
    loop = asyncio.get_running_loop()
    ends = Ends(buffer=4096)
    up, down = os.urandom(3 << 20), os.urandom(3 << 20)

    async def send(sock, data):
        await loop.sock_sendall(sock, data)
        sock.shutdown(socket.SHUT_WR)

    async def slow_read(sock):
        await asyncio.sleep(0.3)  # the splice must hold its source meanwhile
        return await ends.read_all(sock)

    results = await asyncio.gather(send(ends.client, up), send(ends.server, down),
                                   slow_read(ends.server), slow_read(ends.client))
    assert hashlib.sha256(results[2]).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(results[3]).digest() == hashlib.sha256(down).digest()
    await asyncio.wait_for(ends.splice.done, 5)
    ends.close()


def tcp_pair() -> tuple:
    with socket.create_server(("127.0.0.1", 0)) as listening:
        one = socket.create_connection(listening.getsockname())
        other, _ = listening.accept()
    for sock in (one, other):
        sock.setblocking(False)
    return one, other


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    sock.close()  # linger 0: a reset


async def test_a_side_that_resets_ends_both():
    client, a = tcp_pair()
    b, server = tcp_pair()
    splice = Splice(a, b)
    reset(server)
    await asyncio.wait_for(splice.done, 5)
    assert a.fileno() == -1 and b.fileno() == -1
    data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(client, 100), 5)
    assert data == b""  # the client is not left waiting
    client.close()


async def test_a_server_that_took_the_request_and_reset_still_gets_it_acknowledged():
    """The request may have run (and crashed the server): the greeting says
    so, and the sender must not send it to another replica."""
    loop = asyncio.get_running_loop()
    client, a = tcp_pair()
    b, server = tcp_pair()
    splice = Splice(a, b, greeting=b"OK\n", first=b"GET /crash")
    assert await asyncio.wait_for(loop.sock_recv(server, 100), 5) == b"GET /crash"
    reset(server)
    await asyncio.wait_for(splice.done, 5)
    assert await asyncio.wait_for(loop.sock_recv(client, 100), 5) == b"OK\n"
    assert await asyncio.wait_for(loop.sock_recv(client, 100), 5) == b""
    client.close()


async def test_a_server_that_reset_before_it_was_given_a_byte_is_not_acknowledged():
    """Nothing reached it: the sender may try elsewhere."""
    loop = asyncio.get_running_loop()
    client, a = tcp_pair()
    b, server = tcp_pair()
    splice = Splice(a, b, greeting=b"OK\n")
    reset(server)
    await asyncio.wait_for(splice.done, 5)
    assert await asyncio.wait_for(loop.sock_recv(client, 100), 5) == b""
    client.close()


async def test_closing_it_leaves_no_descriptor_behind_in_the_loop():
    """A socket closed while the selector still watched its number would
    break the next socket given that number."""
    loop = asyncio.get_running_loop()
    for _ in range(3):
        ends = Ends(greeting=b"OK\n")
        ends.splice.close()
        ends.splice.close()  # twice: no error
        assert ends.splice.done.done()
        assert await ends.read_all(ends.client) == b""
        ends.close()
    ends = Ends()
    await loop.sock_sendall(ends.client, b"still works")
    assert await asyncio.wait_for(loop.sock_recv(ends.server, 100), 5) == b"still works"
    ends.splice.close()
    ends.close()
