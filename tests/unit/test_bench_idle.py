"""bench/idle.py against a local HTTP server (no cluster): idle clients that
sent half a request are answered once they end it, and only those."""

from __future__ import annotations

import resource
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench import idle


class Health(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the example server

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_idle_clients_are_answered_once_they_end_their_request():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    held, short = idle.open_idle(server.server_address[1], 20)
    try:
        assert len(held) == 20 and short == ""
        assert idle.answered(held, timeout=10) == 20
    finally:
        for sock in held:
            sock.close()
        server.shutdown()


def test_a_client_left_in_the_backlog_is_not_counted_held():
    listener = socket.create_server(("127.0.0.1", 0), backlog=8)  # never accepts
    held, _ = idle.open_idle(listener.getsockname()[1], 3)
    try:
        assert idle.answered(held, timeout=10, quiet=0.5) == 0
    finally:
        for sock in held:
            sock.close()
        listener.close()


def test_the_soft_descriptor_limit_is_raised_within_the_hard_one():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        assert idle.raise_nofile(soft) == soft
        if hard != resource.RLIM_INFINITY:
            assert idle.raise_nofile(hard + 1000) == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
