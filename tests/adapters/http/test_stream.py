"""Passive HTTP: the same traffic captured and decoded gives the sidecar's events.

The caller's bytes go once through a real sidecar (real upstream, a raw socket from
127.0.0.2) and once into a synthetic capture (split, retransmitted, reordered segments)
decoded by the pcap adapter; both event lists must be equal.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from adapters.test_pcap import ACK, FIN, PSH, SYN, decoded, errors, ether, ipv4, pcap, tcp
from commgraph.adapters.http.proxy import HTTPSidecar
from commgraph.adapters.http.relay import Caller
from commgraph.adapters.http.stream import RequestStream
from commgraph.adapters.pcap import PacketDecodeError, PacketDecoder
from commgraph.config import Address, HTTPRoute, HTTPSettings
from commgraph.engine import Verdict
from commgraph.graph import Label
from commgraph.templates import RouteRule, Templates

CALLER, SERVER = "127.0.0.2", "10.0.0.1"
TEMPLATES = Templates(routes=[RouteRule(pattern="/rooms/{room}/temperature")])
AUTH = base64.b64encode(b"app-phone:pw").decode()
REQUESTS = [
    b"GET /rooms/kitchen/temperature?unit=c HTTP/1.1\r\nHost: rooms\r\n\r\n",
    b"GET /rooms/hall/temperature HTTP/1.1\r\nHost: rooms\r\n\r\n",
    b"POST /valves/12 HTTP/1.1\r\nHost: rooms\r\nContent-Length: 4\r\n\r\nopen",
    b"PUT /log HTTP/1.1\r\nHost: rooms\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    f"GET /me HTTP/1.1\r\nHost: rooms\r\nAuthorization: Basic {AUTH}\r\n\r\n".encode(),
    b"DELETE /devices/3f2a9c1e-7b4d-4e2a-9c1e-0123456789ab HTTP/1.1\r\nHost: rooms\r\n\r\n",
]


@pytest.fixture
async def upstream_port() -> AsyncIterator[int]:
    async def anything(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def through_sidecar(port: int) -> list[tuple[str, str, str, int | None]]:
    seen: list[tuple[str, str, str, int | None]] = []

    def observe(ts: float, src: str, dst: str, relation: str, size: int | None) -> Verdict:
        seen.append((src, dst, relation, size))
        return Verdict(Label.LEARNED)

    def identify(caller: Caller, ts: float) -> str:
        return caller.user or caller.ip  # what the passive decoder names callers by

    route = HTTPRoute(
        listen=Address("127.0.0.1", 0), upstream=Address("127.0.0.1", port), service="rooms"
    )
    sidecar = HTTPSidecar(route, HTTPSettings(), observe, identify, templates=TEMPLATES)
    await sidecar.start()
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", sidecar.addresses[0][1], local_addr=(CALLER, 0)
        )
        for request in REQUESTS:  # one at a time: each answer read before the next
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200")
            await asyncio.wait_for(reader.readexactly(2), 10)
        writer.close()
    finally:
        await sidecar.close()
    return seen


def capture(payloads: list[bytes]) -> bytes:
    """One connection CALLER:50000 -> SERVER:80 carrying ``payloads``, split and shuffled."""
    frames: list[tuple[float, bytes]] = []
    ts = 1_700_000_000.0
    seq = {CALLER: 1000, SERVER: 50_000}

    def send(
        side: str, payload: bytes = b"", flags: int = ACK | PSH, at: int | None = None
    ) -> None:
        nonlocal ts
        other = SERVER if side == CALLER else CALLER
        ports = (50000, 80) if side == CALLER else (80, 50000)
        ts += 0.01
        start = seq[side] if at is None else at
        frames.append(
            (ts, ether(ipv4(side, other, 6, tcp(*ports, payload, seq=start, flags=flags))))
        )
        if at is None:
            seq[side] += len(payload) + (1 if flags & (SYN | FIN) else 0)

    send(CALLER, flags=SYN)
    send(SERVER, flags=SYN | ACK)
    send(CALLER, flags=ACK)
    for payload in payloads:
        first = seq[CALLER]
        a, b, c = payload[:7], payload[7:20], payload[20:]
        send(CALLER, c, at=first + 20)  # the last part arrives first
        send(CALLER, a, at=first)
        send(CALLER, a, at=first)  # a retransmission
        send(CALLER, b, at=first + 7)
        seq[CALLER] = first + len(payload)
        send(SERVER, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    send(CALLER, flags=FIN | ACK)
    return pcap(frames)


def passive(data: bytes) -> list[tuple[str, str, str, int | None]]:
    decoder = PacketDecoder(http_ports={80: "rooms"}, templates=TEMPLATES)
    items = decoded(data, decoder)
    assert not errors(items)
    assert decoder.stats.http_streams == 1
    return [
        (item[1], item[2], item[3], item[4])
        for _, item in items
        if not isinstance(item, PacketDecodeError) and item[3] in ("http", "serve")
    ]


async def test_a_capture_gives_the_same_events_as_the_sidecar(upstream_port: int) -> None:
    live = await through_sidecar(upstream_port)
    assert ("app-phone", "GET rooms/me", "http", None) in live
    assert ("POST rooms/valves/{id}", "rooms", "serve", 4) in live
    assert len(live) == 2 * len(REQUESTS)
    assert passive(capture(REQUESTS)) == live


def test_tls_and_garbage_end_the_decoding_and_flows_go_on() -> None:
    for payload, why in (
        (b"\x16\x03\x01\x00\x05hello", "not-http"),
        (b"GET / HTTP/9\r\n\r\n", "malformed"),
    ):
        stream = RequestStream(caller_ip=CALLER, callee="rooms", isn=0, templates=TEMPLATES)
        assert stream.segment(1, payload, 1.0) == []
        assert stream.dead == why
        assert stream.segment(1 + len(payload), REQUESTS[0], 2.0) == []


def test_a_websocket_upgrade_is_recorded_then_the_rest_is_a_tunnel() -> None:
    stream = RequestStream(caller_ip=CALLER, callee="rooms", isn=0, templates=TEMPLATES)
    upgrade = (
        b"GET /ws HTTP/1.1\r\nHost: r\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    events = stream.segment(1, upgrade + b"\x81\x85frame", 1.0)
    assert [(e[2], e[3]) for e in events] == [
        ("GET rooms/ws (websocket)", "http"),
        ("rooms", "serve"),
    ]
    assert stream.dead == "tunnel"


def test_a_gap_that_never_fills_ends_the_decoding() -> None:
    stream = RequestStream(
        caller_ip=CALLER, callee="rooms", isn=0, templates=TEMPLATES, max_ahead=100
    )
    assert stream.segment(500, b"x" * 101, 1.0) == []
    assert stream.dead == "gap"


ZEEK_TSV = """#separator \\x09
#set_separator\t,
#empty_field\t(empty)
#unset_field\t-
#path\thttp
#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\ttrans_depth\tmethod\thost\turi\tversion\trequest_body_len\tresponse_body_len\tstatus_code\tusername
#types\ttime\tstring\taddr\tport\taddr\tport\tcount\tstring\tstring\tstring\tstring\tcount\tcount\tcount\tstring
1700000000.1\tC1\t127.0.0.2\t50000\t10.0.0.1\t80\t1\tGET\trooms\t/rooms/kitchen/temperature?unit=c\t1.1\t0\t2\t200\t-
1700000000.2\tC1\t127.0.0.2\t50000\t10.0.0.1\t80\t3\tPOST\trooms\t/valves/12\t1.1\t4\t2\t200\t-
1700000000.3\tC1\t127.0.0.2\t50000\t10.0.0.1\t80\t5\tGET\trooms\t/me\t1.1\t0\t2\t200\tapp-phone
1700000000.4\tC2\t127.0.0.3\t50001\t10.0.0.9\t8080\t1\tGET\tother\t/x/1\t1.1\t0\t2\t200\t-
1700000000.5\tC2\t127.0.0.3\t50001\t10.0.0.9\t8080\t1\t-\tother\t/x/1\t1.1\t0\t2\t200\t-
"""


def test_zeek_http_log_gives_the_sidecar_events_tsv_and_json() -> None:
    from commgraph.adapters.zeek import FlowDecodeError
    from commgraph.adapters.zeek_logs import read_http_log

    items = list(read_http_log(ZEEK_TSV.splitlines(), callees={80: "rooms"}, templates=TEMPLATES))
    events = [(f[1], f[2], f[3], f[4]) for _, f in items if not isinstance(f, FlowDecodeError)]
    assert events[:6] == [
        (CALLER, "GET rooms/rooms/{room}/temperature", "http", None),
        ("GET rooms/rooms/{room}/temperature", "rooms", "serve", None),
        (CALLER, "POST rooms/valves/{id}", "http", 4),
        ("POST rooms/valves/{id}", "rooms", "serve", 4),
        ("app-phone", "GET rooms/me", "http", None),
        ("GET rooms/me", "rooms", "serve", None),
    ]
    assert events[6][:3] == ("127.0.0.3", "GET 10.0.0.9/x/{id}", "http")  # no name: its address
    bad = [(n, f) for n, f in items if isinstance(f, FlowDecodeError)]
    assert len(bad) == 1 and bad[0][0] == 12 and bad[0][1].field == "method"
    row = (
        '{"ts": 1700000000.1, "id.orig_h": "127.0.0.2", "id.resp_h": "10.0.0.1",'
        ' "id.resp_p": 80, "method": "GET", "uri": "/rooms/hall/temperature"}'
    )
    (_, fields), _ = list(read_http_log([row], callees={80: "rooms"}, templates=TEMPLATES))
    assert not isinstance(fields, FlowDecodeError)
    assert fields[1:4] == (CALLER, "GET rooms/rooms/{room}/temperature", "http")
    ((_, wrong),) = list(read_http_log(["#path\tconn"]))
    assert isinstance(wrong, FlowDecodeError)


def test_a_recording_replays_http_streams_on_the_ports_named() -> None:
    import tempfile
    from pathlib import Path

    from commgraph.adapters.recorded import open_recording

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "talk.pcap"
        path.write_bytes(capture(REQUESTS[:2]))
        recording = open_recording(path, http_ports={80: "rooms"}, templates=TEMPLATES)
        with recording:
            fields = [item for _, item in recording.records if isinstance(item, tuple)]
    assert [(f[1], f[2], f[3]) for f in fields if f[3] in ("http", "serve")] == [
        (CALLER, "GET rooms/rooms/{room}/temperature", "http"),
        ("GET rooms/rooms/{room}/temperature", "rooms", "serve"),
    ] * 2
