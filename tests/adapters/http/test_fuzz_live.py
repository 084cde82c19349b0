"""Hypothesis-fuzzed request heads sent to a real sidecar over real sockets: the answer is
ours (400, 413, 431, a JSON error), the service's, or none; that connection closes, and a
keep-alive connection held open beside them keeps working."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commgraph.adapters.http.proxy import HTTPSidecar
from commgraph.config import Address, HTTPRoute, HTTPSettings
from commgraph.engine import Verdict
from commgraph.graph import Label

HOST = "127.0.0.1"
TIMEOUT = 10.0


class _Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_POST = do_PUT = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def sidecar_port() -> Iterator[int]:
    upstream = ThreadingHTTPServer((HOST, 0), _Answer)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: list[HTTPSidecar] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        route = HTTPRoute(
            listen=Address(HOST, 0),
            upstream=Address(HOST, upstream.server_address[1]),
            service="s",
        )
        sidecar = HTTPSidecar(
            route,
            HTTPSettings(max_head_size=2048),
            lambda *a: Verdict(Label.LEARNED),
            lambda caller, ts: caller.ip,
        )
        loop.run_until_complete(sidecar.start())
        holder.append(sidecar)
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(TIMEOUT)
    yield holder[0].addresses[0][1]
    asyncio.run_coroutine_threadsafe(holder[0].close(), loop).result(TIMEOUT)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(TIMEOUT)
    upstream.shutdown()


def _exchange(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /keep HTTP/1.1\r\nhost: x\r\n\r\n")
    data = b""
    while not data.endswith(b"ok"):
        chunk = sock.recv(4096)
        assert chunk, "the keep-alive connection was closed"
        data += chunk
    return data


HEADS = st.lists(
    st.sampled_from(
        [
            b"GET",
            b"POST",
            b" ",
            b"/x",
            b"HTTP/1.1",
            b"HTTP/1.0",
            b"\r\n",
            b"host: a",
            b":",
            b"\x00",
            b"content-length: 3",
            b"content-length: x",
            b"transfer-encoding: chunked",
            b"upgrade: websocket",
            b"\n",
            b"\t",
            b"\xff",
            b"a" * 3000,
            b"0\r\n\r\n",
            b"zz",
        ]
    ),
    max_size=25,
).map(b"".join) | st.binary(max_size=200)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(head=HEADS)
def test_fuzzed_heads_get_only_our_error_and_close_only_their_connection(
    sidecar_port: int, head: bytes
) -> None:
    keep = socket.create_connection((HOST, sidecar_port), timeout=TIMEOUT)
    try:
        assert b"200 OK" in _exchange(keep)
        with socket.create_connection((HOST, sidecar_port), timeout=TIMEOUT) as bad:
            bad.sendall(head + b"\r\n\r\n")
            bad.shutdown(socket.SHUT_WR)  # all it will send: the sidecar answers, then closes
            answer = b""
            while chunk := bad.recv(65536):
                answer += chunk
        if answer:  # ours (400, 413, 431: JSON naming the error) or the service's
            assert answer.startswith(b"HTTP/1.1 "), answer[:40]
            status = int(answer.split(b" ", 2)[1])
            if status in (400, 413, 431):
                assert b'{"error": ' in answer
        assert b"200 OK" in _exchange(keep)  # the other connection is untouched
    finally:
        keep.close()
