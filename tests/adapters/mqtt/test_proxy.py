"""The proxy in-process, in front of a real Mosquitto: what `commgraph run` tests can't reach.

The proxy runs on its own event loop in a thread; clients are raw sockets speaking bytes from
the codec, or paho where a real client is the point.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from commgraph.adapters.mqtt.codec import (
    MQTTDecoder,
    Publish,
    encode_connect,
    encode_publish,
    encode_subscribe,
)
from commgraph.adapters.mqtt.proxy import ClientIdentity, MQTTProxy
from commgraph.config import Address, MQTTSettings, TLSSettings, parse_config
from commgraph.daemon import Daemon
from commgraph.engine import Verdict
from commgraph.graph import Label
from commgraph.store import Store

ALLOW = Verdict(Label.LEARNED)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    """An MQTTProxy on a private event loop in a background thread."""

    def __init__(self, proxy: MQTTProxy) -> None:
        self.proxy = proxy
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(proxy.start(), self.loop).result(10)
        self.port = proxy.addresses[0][1]

    def call(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the proxy's loop and return its result (to read its state safely)."""
        done: asyncio.Future[object] = asyncio.run_coroutine_threadsafe(_call(fn), self.loop)
        return done.result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def _call(fn: Callable[[], object]) -> object:
    return fn()


@pytest.fixture
def run_proxy(mosquitto: Any) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(
        observe: Callable[..., Verdict] = lambda *event: ALLOW,
        identify: Callable[[ClientIdentity, float], str] = lambda c, ts: f"mqtt:{c.client_id}",
        **settings: object,
    ) -> Running:
        mqtt = MQTTSettings(
            listen=Address("127.0.0.1", 0),
            upstream=Address(mosquitto.host, mosquitto.port),
            **settings,  # type: ignore[arg-type]
        )
        running = Running(MQTTProxy(mqtt, observe, identify, node="test"))
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


class RawClient:
    """A blocking MQTT 3.1.1 client on a plain socket, built from the codec."""

    def __init__(self, port: int, client_id: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = MQTTDecoder(from_client=False, max_packet_size=64 * 1024 * 1024)
        self.sock.sendall(encode_connect(client_id))
        self.packets: list[object] = []
        self.next_packet()  # CONNACK

    def next_packet(self, timeout: float = 5) -> object:
        deadline = time.monotonic() + timeout
        while not self.packets:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the proxy")
            self.packets.extend(self.decoder.feed(data))
        return self.packets.pop(0)

    def publishes(self, n: int, timeout: float = 5) -> list[Publish]:
        got: list[Publish] = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            try:
                packet = self.next_packet(deadline - time.monotonic())
            except TimeoutError:
                break
            if isinstance(packet, Publish):
                got.append(packet)
        return got

    def close(self) -> None:
        self.sock.close()


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def exchange(port: int, tag: str) -> list[bytes]:
    """One subscriber, one publisher, three QoS 0 messages: what arrives."""
    sub = RawClient(port, f"sub-{tag}")
    sub.sock.sendall(encode_subscribe(1, [(f"x/{tag}", 0)], v5=False))
    sub.next_packet()  # SUBACK
    pub = RawClient(port, f"pub-{tag}")
    for i in range(3):
        pub.sock.sendall(encode_publish(f"x/{tag}", f"m{i}".encode(), v5=False))
    got = [bytes(p.raw[-2:]) for p in sub.publishes(3, timeout=2)]
    sub.close()
    pub.close()
    return got


def failing(*event: object) -> Verdict:
    raise RuntimeError("engine bug")


@pytest.mark.parametrize(("fail_open", "arrives"), [(True, 3), (False, 0)])
def test_a_failing_engine_forwards_or_blocks_as_configured(
    run_proxy: Callable[..., Running], fail_open: bool, arrives: int
) -> None:
    running = run_proxy(observe=failing, fail_open=fail_open)
    assert len(exchange(running.port, "fail")) == arrives
    assert running.proxy.stats.engine_errors >= 3


def test_no_connect_in_time_closes_the_connection(run_proxy: Callable[..., Running]) -> None:
    running = run_proxy(connect_timeout=0.3)
    sock = socket.create_connection(("127.0.0.1", running.port))
    started = time.monotonic()
    assert closed_within(sock, 3)
    assert 0.2 < time.monotonic() - started < 3
    assert exchange(running.port, "after") == [b"m0", b"m1", b"m2"]


def test_a_packet_over_the_limit_closes_only_that_connection(
    run_proxy: Callable[..., Running],
) -> None:
    running = run_proxy(max_packet_size=10_000)
    big = RawClient(running.port, "big")
    big.sock.sendall(encode_publish("x/big", b"z" * 20_000, v5=False))
    assert closed_within(big.sock, 3)
    assert running.proxy.stats.decode_errors == 1
    assert exchange(running.port, "small") == [b"m0", b"m1", b"m2"]


def test_garbage_closes_one_connection_and_the_rest_goes_on(
    run_proxy: Callable[..., Running],
) -> None:
    running = run_proxy()
    bystander = RawClient(running.port, "bystander")
    bystander.sock.sendall(encode_subscribe(1, [("x/by", 0)], v5=False))
    bystander.next_packet()
    bad = socket.create_connection(("127.0.0.1", running.port))
    bad.sendall(encode_connect("bad") + b"\xf0\xff\xff\xff\xff\x7f")
    assert closed_within(bad, 3)
    pub = RawClient(running.port, "pub-by")
    pub.sock.sendall(encode_publish("x/by", b"still", v5=False))
    assert [p.payload_size for p in bystander.publishes(1)] == [5]


def test_a_slow_reader_pauses_the_sender_instead_of_buffering(
    run_proxy: Callable[..., Running],
) -> None:
    """Backpressure: while a subscriber reads nothing, the proxy stops reading the broker, so
    its buffer for that subscriber stays bounded; when it reads again, everything arrives."""
    running = run_proxy()
    slow = RawClient(running.port, "slow")
    slow.sock.sendall(encode_subscribe(1, [("flood", 0)], v5=False))
    slow.next_packet()
    pub = RawClient(running.port, "flooder")
    payload = b"f" * 60_000
    for _ in range(300):  # 18 MB towards a reader that reads nothing for now
        pub.sock.sendall(encode_publish("flood", payload, v5=False))
    time.sleep(1.5)

    def buffered() -> int:
        return max(
            (
                c.transport.get_write_buffer_size()
                for c in running.proxy._connections
                if c.transport is not None
            ),
            default=0,
        )

    # the high-water mark (256 KiB) plus at most one read's worth from the broker
    assert int(running.call(buffered)) < 1024 * 1024  # type: ignore[call-overload]
    got = slow.publishes(300, timeout=30)
    assert len(got) == 300
    assert {p.payload_size for p in got} == {60_000}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (CN lock-hub-3)."""
    d = tmp_path_factory.mktemp("pki")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    )
    for name, cn in (("server", "127.0.0.1"), ("client", "lock-hub-3")):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={cn}",
        )
        (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        )
    return d


def test_tls_client_certificate_names_the_service(
    run_proxy: Callable[..., Running], certificates: Path
) -> None:
    seen: list[ClientIdentity] = []

    def identify(client: ClientIdentity, ts: float) -> str:
        seen.append(client)
        return f"mqtt:{client.client_id}"

    tls_port = free_port()
    running = run_proxy(
        identify=identify,
        tls=TLSSettings(
            listen=Address("127.0.0.1", tls_port),
            cert=certificates / "server.pem",
            key=certificates / "server.key",
            ca=certificates / "ca.pem",
            require_client_cert=True,
        ),
    )
    context = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
    context.load_cert_chain(certificates / "client.pem", certificates / "client.key")
    with (
        socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(encode_connect("anything"))
        connack = MQTTDecoder(from_client=False).feed(tls.recv(1024))
    assert len(connack) == 1
    assert [(c.client_id, c.cert_cn) for c in seen] == [("anything", "lock-hub-3")]
    assert running.proxy.stats.connections_total >= 1
    # without a client certificate the handshake is refused
    bare = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
    with (
        socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw,
        pytest.raises((ssl.SSLError, ConnectionResetError, OSError)),
        bare.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(encode_connect("nocert"))
        if not tls.recv(1024):
            raise ConnectionResetError("closed")


def test_daemon_applies_decisions_made_by_another_process(tmp_path: Path) -> None:
    """The CLI writes a decision to the database; the running daemon applies it within its
    next second, without writing it to the audit log a second time."""
    from commgraph.alerts import Action

    config = parse_config({"learning": {"duration": "1s"}, "modes": {"default": "protect"}})
    db = tmp_path / "node.db"

    async def scenario() -> list[bool]:
        with Store(db) as store:
            daemon = Daemon(config, store)
            t = time.time()
            daemon.observe(t, "a", "x", "publish")
            blocked = [daemon.observe(t + 5, "a", "y", "publish").block]
            await asyncio.sleep(0)
            daemon.every_second()
            with Store(db) as cli:  # what `commgraph approve 1` does
                engine = cli.load_engine()
                engine.decide(1, Action.APPROVE, by="owner", at=t + 6)
                cli.write_changes(engine, engine.take_changes())
            daemon.every_second()
            blocked.append(daemon.observe(t + 7, "a", "y", "publish").block)
            with Store(db) as cli:
                engine = cli.load_engine()
                engine.set_mode("a", None, by="owner", at=t + 8)  # back to the default
                engine.decide(1, Action.DENY, by="owner", at=t + 8)
                cli.write_changes(engine, engine.take_changes())
            daemon.every_second()
            blocked.append(daemon.observe(t + 9, "a", "y", "publish").block)
            assert [d["action"] for d in store.decisions()] == ["approve", "mode", "deny"]
            return blocked

    assert asyncio.run(scenario()) == [True, False, True]
