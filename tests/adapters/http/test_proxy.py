"""The HTTP sidecar of a real node (Daemon, SQLite store) in front of a real aiohttp service,
called by real clients (aiohttp, http.client, curl) from distinct loopback addresses, so
identity rules by IP are exercised. Every wait has a deadline; time in the engine is a clock
the test moves, so learning does not depend on the machine's speed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import shutil
import ssl
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.mqtt import test_proxy as mqtt_proxy_tests
from commgraph.alerts import Action
from commgraph.config import parse_config
from commgraph.daemon import Daemon
from commgraph.demo import free_port
from commgraph.store import Store
from commgraph.web.auth import load_or_create
from conftest import raise_nofile_limit

# the same test PKI as the MQTT proxy's (a CA, a server for 127.0.0.1, a client lock-hub-3)
pki = mqtt_proxy_tests.certificates

HOST = "127.0.0.1"
HEATING, HUB, STRANGER, PROXY = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
TIMEOUT = 30.0
CURL = shutil.which("curl")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Upstream:
    """The room service: what it was asked, as it saw it."""

    port: int = 0
    seen: list[tuple[str, str, str]] = field(default_factory=list)  # (peer, method, path)

    def paths(self) -> list[str]:
        return [f"{method} {path}" for _, method, path in self.seen]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream()

    async def anything(request: web.Request) -> web.StreamResponse:
        state.seen.append((request.remote or "?", request.method, request.path_qs))
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(65536):
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"size": size, "sha256": digest.hexdigest()})

    async def download(request: web.Request) -> web.StreamResponse:
        state.seen.append((request.remote or "?", request.method, request.path))
        total = int(request.match_info["size"])
        response = web.StreamResponse()
        if request.query.get("chunked"):
            response.enable_chunked_encoding()
        else:
            response.content_length = total
        await response.prepare(request)
        block = b"x" * 65536
        sent = 0
        while sent < total:
            piece = block[: total - sent]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def echo(request: web.Request) -> web.StreamResponse:
        state.seen.append((request.remote or "?", request.method, request.path))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + message.data)
        return ws

    app = web.Application(client_max_size=1 << 30)
    app.router.add_get("/download/{size}", download)
    app.router.add_get("/ws", echo)
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, backlog=2048)
    await site.start()
    state.port = runner.addresses[0][1]
    yield state
    await runner.cleanup()


@dataclass
class Node:
    daemon: Daemon
    clock: Clock
    port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def alerts(self) -> list[tuple[int, str, str, str]]:
        engine = self.daemon.engine
        found = []
        for alert in engine.alerts.by_id.values():
            src, dst, relation = engine.alert_edge(alert)
            found.append((alert.id, src, dst, relation))
        return found

    def decide_all(self, route: str, action: Action) -> list[int]:
        """Decide the alerts about a route: its caller's (http) and its callee's (serve)."""
        ids = [i for i, s, d, _ in self.alerts() if route in (s, d)]
        for alert_id in ids:
            self.daemon.decide(alert_id, action, by="owner")
        return ids


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
async def node(tmp_path: Path, upstream: Upstream) -> AsyncIterator[NodeFactory]:
    started: list[tuple[Daemon, asyncio.Task[None], Store]] = []

    async def start(mode: str = "protect", *, api: bool = False, **http: Any) -> Node:
        clock = Clock()
        data: dict[str, Any] = {
            "node": {"name": "node-a"},
            "learning": {"duration": "60s"},
            "modes": {"default": mode},
            "identity": {
                "rules": [
                    {"match": "ip", "equals": HEATING, "service": "heating"},
                    {"match": "ip", "equals": HUB, "service": "hub"},
                    {"match": "username", "pattern": "^(?P<service>app)-(?P<instance>.+)$"},
                ]
            },
            "templates": {"routes": ["/rooms/{room}/temperature"]},
            "http": {
                "routes": [
                    {
                        "listen": f"{HOST}:0",
                        "upstream": f"{HOST}:{upstream.port}",
                        "service": "rooms",
                    }
                ],
                "trusted_proxies": [f"{PROXY}/32"],
                **http,
            },
        }
        if api:
            data["api"] = {"listen": f"{HOST}:{free_port()}", "credentials": "node.credentials"}
        config = parse_config(data, "site.toml", tmp_path)
        store = Store(tmp_path / f"node{len(started)}.db")
        daemon = Daemon(config, store, clock=clock)
        task = asyncio.get_running_loop().create_task(daemon.run())
        await asyncio.wait_for(daemon.started.wait(), TIMEOUT)
        started.append((daemon, task, store))
        return Node(daemon, clock, daemon.sidecars[0].addresses[0][1])

    yield start
    for daemon, task, store in started:
        daemon.stop()
        await asyncio.wait_for(task, TIMEOUT)
        store.close()


async def get(url: str, source: str, method: str = "GET", **kwargs: Any) -> tuple[int, bytes]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, url, **kwargs) as response,
    ):
        return response.status, await response.read()


def stdlib_get(port: int, path: str, source: str) -> tuple[int, bytes]:
    """http.client (urllib's transport) from a given source address."""
    connection = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT, source_address=(source, 0))
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


async def curl(*args: str, source: str = HEATING, output: str = "/dev/stdout") -> tuple[int, str]:
    assert CURL is not None, "curl is installed on this machine (apt package curl)"
    process = await asyncio.create_subprocess_exec(
        CURL,
        "-sS",
        "--interface",
        source,
        "-o",
        output,
        "-w",
        "\n%{http_code}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), TIMEOUT * 4)
    assert process.returncode == 0, err.decode()
    body, _, code = out.decode().rpartition("\n")
    return int(code), body


async def learn(node: Node) -> None:
    """What the site does while it learns: heating reads rooms, the hub reads status."""
    for room in ("kitchen", "hall"):
        status, _ = await get(f"{node.url}/rooms/{room}/temperature", HEATING)
        assert status == 200
    assert (await asyncio.to_thread(stdlib_get, node.port, "/status?verbose=1", HUB))[0] == 200
    node.clock.now += 120  # learning (60 s) is over for everyone


async def test_learning_then_a_new_route_is_flagged_approved_and_allowed(
    node: NodeFactory, upstream: Upstream
) -> None:
    n = await node("protect")
    await learn(n)
    # a new room is a new value, not a new route
    assert (await get(f"{n.url}/rooms/cellar/temperature", HEATING))[0] == 200
    before = len(upstream.seen)
    status, body = await get(f"{n.url}/unlock", HUB, "POST", data=b"now")
    assert status == 403
    answer = json.loads(body)
    assert answer["error"] == "forbidden" and answer["label"] == "pending"
    alerts = {alert_id: (src, dst, rel) for alert_id, src, dst, rel in n.alerts()}
    assert answer["alert"] in alerts
    assert alerts[answer["alert"]] == ("hub", "POST rooms/unlock", "http")
    assert "serve" in {rel for _, _, rel in alerts.values()}  # the callee side: rooms
    assert upstream.paths()[before:] == []  # it never reached the service
    edges = {(src, dst, rel) for src, dst, rel in alerts.values()}
    assert ("POST rooms/unlock", "rooms", "serve") in edges
    assert not any("cellar" in dst or "kitchen" in dst for _, dst, _ in edges)
    # the owner approves: the same call now goes through
    assert len(n.decide_all("POST rooms/unlock", Action.APPROVE)) == 2
    status, body = await get(f"{n.url}/unlock", HUB, "POST", data=b"now")
    assert status == 200 and json.loads(body)["size"] == 3
    assert upstream.paths()[-1] == "POST /unlock"


async def test_a_denied_route_is_403_in_protect_mode(node: NodeFactory, upstream: Upstream) -> None:
    n = await node("protect")
    await learn(n)
    assert (await get(f"{n.url}/rooms/kitchen/valve", HEATING, "PUT"))[0] == 403
    assert n.decide_all("PUT rooms/rooms/kitchen/valve", Action.DENY)
    status, body = await get(f"{n.url}/rooms/kitchen/valve", HEATING, "PUT")
    assert status == 403 and json.loads(body)["label"] == "denied"
    # the same path with a new method is a new edge too
    assert (await get(f"{n.url}/rooms/kitchen/temperature", HEATING, "DELETE"))[0] == 403
    assert not any(p.startswith(("PUT", "DELETE")) for p in upstream.paths())
    # what was learned still works, by curl too
    code, body = await curl(f"{n.url}/rooms/attic/temperature", source=HEATING)
    assert code == 200 and json.loads(body)["size"] == 0


async def test_monitor_mode_forwards_everything_and_flags_it(
    node: NodeFactory, upstream: Upstream
) -> None:
    n = await node("monitor")
    await learn(n)
    assert (await get(f"{n.url}/unlock", HUB, "POST", data=b"x"))[0] == 200
    assert upstream.paths()[-1] == "POST /unlock"
    assert ("hub", "POST rooms/unlock") in {(s, d) for _, s, d, _ in n.alerts()}


async def test_a_new_caller_after_the_bootstrap_is_held_in_protect_mode(
    node: NodeFactory, upstream: Upstream
) -> None:
    n = await node("protect")
    await learn(n)
    n.clock.now += 3600  # long after the site's bootstrap
    status, _ = await get(f"{n.url}/rooms/kitchen/temperature", STRANGER)
    assert status == 403
    assert any(src == STRANGER for _, src, _, _ in n.alerts())  # asked about the newcomer
    assert STRANGER not in {peer for peer, _, _ in upstream.seen}


async def test_callers_named_by_basic_user_and_by_trusted_forwarded_for(
    node: NodeFactory, upstream: Upstream
) -> None:
    n = await node("monitor")
    auth = "Basic " + base64.b64encode(b"app-phone:secret").decode()
    assert (await get(f"{n.url}/a", STRANGER, headers={"Authorization": auth}))[0] == 200
    code, _ = await curl("-H", f"X-Forwarded-For: {HEATING}", f"{n.url}/b", source=PROXY)
    assert code == 200
    code, _ = await curl("-H", f"X-Forwarded-For: {HEATING}", f"{n.url}/c", source=STRANGER)
    assert code == 200
    graph = n.daemon.engine.graph
    edges = {n.daemon.engine.edge_names(e)[:2] for e in range(len(graph.key))}
    assert ("app", "GET rooms/a") in edges
    assert ("heating", "GET rooms/b") in edges  # the trusted proxy named the caller
    assert (STRANGER, "GET rooms/c") in edges  # anyone else's X-Forwarded-For is ignored
    assert ("GET rooms/a", "rooms") in edges  # the callee side


async def test_keep_alive_carries_many_requests_on_one_connection(
    node: NodeFactory, upstream: Upstream
) -> None:
    n = await node("monitor")
    connector = aiohttp.TCPConnector(local_addr=(HEATING, 0), limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(200):
            async with session.get(f"{n.url}/rooms/{i}/temperature") as response:
                assert response.status == 200
                await response.read()
    sidecar = n.daemon.sidecars[0]
    assert sidecar.stats.connections_total == 1
    assert sidecar.stats.requests == 200


async def test_chunked_bodies_both_ways(node: NodeFactory, upstream: Upstream) -> None:
    n = await node("monitor")

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(50):
            yield bytes([i]) * 1000

    status, body = await get(f"{n.url}/upload", HEATING, "POST", data=pieces())
    expected = hashlib.sha256(b"".join(bytes([i]) * 1000 for i in range(50))).hexdigest()
    assert status == 200 and json.loads(body) == {"size": 50_000, "sha256": expected}
    status, body = await get(f"{n.url}/download/300000?chunked=1", HEATING)
    assert status == 200 and body == b"x" * 300_000


async def test_expect_100_continue_and_http_10(node: NodeFactory, upstream: Upstream) -> None:
    n = await node("monitor")
    code, body = await curl(
        "-H", "Expect: 100-continue", "--data-binary", "x" * 5000, f"{n.url}/put"
    )
    assert code == 200 and json.loads(body)["size"] == 5000
    code, body = await curl("-0", f"{n.url}/old", source=HUB)
    assert code == 200 and json.loads(body)["size"] == 0


async def test_websocket_echo_through_the_sidecar(node: NodeFactory, upstream: Upstream) -> None:
    n = await node("monitor")
    connector = aiohttp.TCPConnector(local_addr=(HEATING, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.ws_connect(f"{n.url}/ws") as ws,
    ):
        for i in range(20):
            await ws.send_str(f"m{i}")
            message = await asyncio.wait_for(ws.receive(), TIMEOUT)
            assert message.data == f"echo:m{i}"
    engine = n.daemon.engine
    edges = {engine.edge_names(e) for e in range(len(engine.graph.key))}
    assert ("heating", "GET rooms/ws (websocket)", "http") in edges


async def test_50_mb_up_and_down_stream_with_bounded_memory(
    node: NodeFactory, upstream: Upstream, tmp_path: Path
) -> None:
    n = await node("monitor")
    size = 50 * 1024 * 1024
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        block = bytes(range(256)) * 4096  # 1 MiB
        for _ in range(50):
            f.write(block)
    expected = hashlib.sha256(big.read_bytes()).hexdigest()
    tracemalloc.start()
    try:
        code, body = await curl("-T", str(big), f"{n.url}/upload")
        assert code == 200 and json.loads(body) == {"size": size, "sha256": expected}
        code, body = await curl(
            "-H", "Transfer-Encoding: chunked", "-T", str(big), f"{n.url}/upload-chunked"
        )
        assert code == 200 and json.loads(body)["sha256"] == expected
        out = tmp_path / "down.bin"
        code, _ = await curl(f"{n.url}/download/{size}", output=str(out))
        assert code == 200 and out.stat().st_size == size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the sidecar (and the service, in this process) never held a body whole
    assert peak < 12 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


async def test_1000_concurrent_connections_none_lost(node: NodeFactory, upstream: Upstream) -> None:
    raise_nofile_limit()
    n = await node("monitor")
    sources = [HEATING, HUB, STRANGER, PROXY]
    count = 1000

    async def one(i: int) -> int:
        reader, writer = await asyncio.open_connection(
            HOST, n.port, local_addr=(sources[i % len(sources)], 0)
        )
        try:
            writer.write(f"GET /rooms/{i}/temperature HTTP/1.1\r\nhost: x\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            return int(head.split(b" ", 2)[1])
        finally:
            writer.close()

    opened = []
    for i in range(count):  # all open at once: each is held until every one has its answer
        opened.append(asyncio.ensure_future(one(i)))
    statuses = await asyncio.wait_for(asyncio.gather(*opened), 120)
    assert statuses == [200] * count
    assert n.daemon.sidecars[0].stats.requests == count


async def test_bad_requests_close_only_their_connection(
    node: NodeFactory, upstream: Upstream
) -> None:
    n = await node("monitor")
    reader, writer = await asyncio.open_connection(HOST, n.port, local_addr=(HEATING, 0))
    writer.write(b"GET /fine HTTP/1.1\r\nhost: x\r\n\r\n")
    assert b" 200 " in await reader.readuntil(b"\r\n\r\n")
    await reader.readuntil(b"}")  # its JSON body
    for bad, status in (
        (b"GET /x HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
        (b"GET /x HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"400"),  # binary
    ):
        r, w = await asyncio.open_connection(HOST, n.port, local_addr=(STRANGER, 0))
        w.write(bad)
        answer = await asyncio.wait_for(r.read(), TIMEOUT)  # read() returns at the close
        assert answer.split(b" ", 2)[1] == status, answer[:80]
        w.close()
    assert n.daemon.sidecars[0].stats.bad_requests == 3
    assert n.daemon.engine.signals["malformed"] == 3
    # the good connection is still there
    await asyncio.sleep(0)
    writer.write(b"GET /still HTTP/1.1\r\nhost: x\r\n\r\n")
    assert b" 200 " in await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    writer.close()


async def test_metrics_count_the_sidecars_requests_by_service(
    node: NodeFactory, upstream: Upstream
) -> None:
    n = await node("protect", api=True)
    await learn(n)  # 3 requests
    assert (await get(f"{n.url}/unlock", HUB, "POST", data=b"now"))[0] == 403
    r, w = await asyncio.open_connection(HOST, n.port, local_addr=(STRANGER, 0))
    w.write(b"GET /x HTTP/1.1\r\nno colon here\r\n\r\n")
    assert b" 400 " in await asyncio.wait_for(r.read(), TIMEOUT)
    w.close()
    token = load_or_create(n.daemon.credentials_path()).api_token
    url = f"http://{n.daemon.config.api.listen}/metrics"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        assert response.status == 200
        lines = (await response.text()).splitlines()
    for line in (
        'commgraph_http_requests_total{service="rooms"} 4.0',
        'commgraph_http_blocked_total{service="rooms"} 1.0',
        'commgraph_http_bad_requests_total{service="rooms"} 1.0',
        'commgraph_http_upstream_errors_total{service="rooms"} 0.0',
        'commgraph_http_engine_errors_total{service="rooms"} 0.0',
        'commgraph_http_connections_total{service="rooms"} 5.0',
    ):
        assert line in lines, (line, [x for x in lines if "http_" in x])
    assert any(x.startswith('commgraph_http_connections_open{service="rooms"}') for x in lines)


async def test_a_tls_client_certificate_names_the_caller(upstream: Upstream, pki: Path) -> None:
    certificates = pki
    from commgraph.adapters.http.proxy import HTTPSidecar
    from commgraph.adapters.http.relay import Caller
    from commgraph.config import Address, HTTPRoute, HTTPSettings, TLSSettings
    from commgraph.engine import Verdict
    from commgraph.graph import Label

    seen: list[Caller] = []
    events: list[tuple[str, str, str]] = []

    def identify(caller: Caller, ts: float) -> str:
        seen.append(caller)
        return f"http:cert:{caller.cert_cn}"

    def observe(ts: float, src: str, dst: str, relation: str, size: int | None) -> Verdict:
        events.append((src, dst, relation))
        return Verdict(Label.LEARNED)

    listen = Address(HOST, 0)
    route = HTTPRoute(
        listen=listen,
        upstream=Address(HOST, upstream.port),
        service="locks",
        tls=TLSSettings(
            listen=listen,
            cert=certificates / "server.pem",
            key=certificates / "server.key",
            ca=certificates / "ca.pem",
            require_client_cert=True,
        ),
    )
    sidecar = HTTPSidecar(route, HTTPSettings(), observe, identify)
    await sidecar.start()
    try:
        context = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
        context.load_cert_chain(certificates / "client.pem", certificates / "client.key")
        port = sidecar.addresses[0][1]
        status, _ = await get(f"https://{HOST}:{port}/unlock", HUB, "POST", ssl=context)
        assert status == 200
        assert [(c.cert_cn, c.ip) for c in seen] == [("lock-hub-3", HUB)]
        assert events[0] == ("http:cert:lock-hub-3", "POST locks/unlock", "http")
        bare = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
        with pytest.raises(aiohttp.ClientError):
            await get(f"https://{HOST}:{port}/unlock", HUB, "POST", ssl=bare)
        assert len(seen) == 1  # no certificate, no request
    finally:
        await sidecar.close()
