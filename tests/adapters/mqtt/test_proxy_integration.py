"""The MQTT proxy against a real Mosquitto, driven by real paho clients.

Transparency tests run each scenario twice, straight to the broker and through the proxy in
monitor mode, and expect the receivers to see exactly the same thing. Protect-mode tests check
enforcement the way Mosquitto's own ACL behaves. Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import random
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.client import CallbackAPIVersion, MQTTv5, MQTTv311
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import Broker, Proxy, raise_nofile_limit, wait_until

HOST = "127.0.0.1"
TIMEOUT = 20.0  # for anything that should happen promptly (a busy 2-core machine is slow)
QUIET = 1.0  # how long "nothing arrives" is watched
SUCCESS = 0
NO_MATCHING_SUBSCRIBERS = 0x10  # MQTT 5: a success code, for a topic nobody subscribes to
SUBACK_FAILURE = 0x80  # MQTT 3.1.1
NOT_AUTHORIZED = 0x87  # MQTT 5

PROTOCOLS = {"3.1.1": MQTTv311, "5": MQTTv5}


# -- a synchronous paho wrapper ---------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Received:
    """A message as the receiving client sees it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: tuple[tuple[str, str], ...] = ()


def _code(reason: Any) -> int:
    return int(getattr(reason, "value", reason))


def _props(message: mqtt.MQTTMessage) -> tuple[tuple[str, str], ...]:
    props = getattr(message, "properties", None)
    if props is None:
        return ()
    found = []
    if hasattr(props, "ContentType"):
        found.append(("content-type", props.ContentType))
    found.extend((f"user:{k}", v) for k, v in getattr(props, "UserProperty", []))
    return tuple(found)


class Client:
    """A paho client whose calls wait for the broker's answer (with a deadline)."""

    def __init__(
        self,
        port: int,
        client_id: str,
        protocol: int,
        *,
        clean: bool = True,
        session_expiry: int | None = None,
        will: tuple[str, bytes, int] | None = None,
        bind: str = "",
    ) -> None:
        self.port, self.client_id, self.protocol, self.clean = port, client_id, protocol, clean
        self.bind = bind  # a loopback source address (127.0.0.x), for identity by address
        self.session_expiry = session_expiry
        extra: dict[str, Any] = {} if protocol == MQTTv5 else {"clean_session": clean}
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **extra
        )
        if will is not None:
            self.paho.will_set(*will)
        self._cond = threading.Condition()
        self._connack: tuple[int, bool] | None = None
        self._subacks: dict[int, list[int]] = {}
        self._pubacks: dict[int, int] = {}
        self._closing = False
        self.unexpected_disconnects = 0
        self.messages: queue.Queue[Received] = queue.Queue()
        self.paho.on_connect = self._on_connect
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_publish = self._on_publish
        self.paho.on_message = self._on_message
        self.paho.on_disconnect = self._on_disconnect

    # callbacks (paho's network thread)
    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        with self._cond:
            self._connack = (_code(reason), bool(flags.session_present))
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: list[Any], _p: Any) -> None:
        with self._cond:
            self._subacks[mid] = [_code(r) for r in reasons]
            self._cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._cond:
            self._pubacks[mid] = _code(reason)
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        self.messages.put(Received(m.topic, m.payload, m.qos, bool(m.retain), _props(m)))

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        with self._cond:
            if not self._closing:
                self.unexpected_disconnects += 1
            self._cond.notify_all()

    def _wait(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                raise AssertionError(f"{self.client_id}: no {what} within {timeout:g} s")

    # connection
    def start(self, loop: SharedLoop | None = None) -> None:
        """Open the TCP connection, send CONNECT, start the network thread (or join ``loop``)."""
        if self.protocol == MQTTv5:
            props = None
            if self.session_expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.session_expiry
            self.paho.connect(
                HOST,
                self.port,
                keepalive=30,
                bind_address=self.bind,
                clean_start=self.clean,
                properties=props,
            )
        else:
            self.paho.connect(HOST, self.port, keepalive=30, bind_address=self.bind)
        if loop is None:
            self.paho.loop_start()
        else:
            loop.add(self)

    def wait_connected(self, timeout: float = TIMEOUT) -> bool:
        """Wait for CONNACK, assert success, return the session-present flag."""
        self._wait(lambda: self._connack is not None, "CONNACK", timeout)
        assert self._connack is not None
        code, session_present = self._connack
        assert code == SUCCESS, f"{self.client_id}: CONNACK reason {code:#x}"
        return session_present

    def connect(self, timeout: float = TIMEOUT) -> bool:
        self.start()
        return self.wait_connected(timeout)

    def disconnect(self) -> None:
        """A clean DISCONNECT."""
        with self._cond:
            self._closing = True
        self.paho.disconnect()
        self.paho.loop_stop()

    def kill(self) -> None:
        """Close the socket without a DISCONNECT packet, as a crashing device would."""
        with self._cond:
            self._closing = True
        self.paho.loop_stop()
        sock = self.paho.socket()
        assert sock is not None, f"{self.client_id}: no socket to kill"
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def close(self) -> None:
        """Teardown: never raises."""
        with self._cond:
            self._closing = True
        with contextlib.suppress(Exception):
            self.paho.disconnect()
        self.paho.loop_stop()

    # operations
    def subscribe_nowait(self, filters: list[tuple[str, int]]) -> int:
        rc, mid = self.paho.subscribe(filters)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"{self.client_id}: subscribe failed locally ({rc})"
        assert mid is not None
        return mid

    def wait_subscribed(self, mid: int, timeout: float = TIMEOUT) -> list[int]:
        self._wait(lambda: mid in self._subacks, f"SUBACK for mid {mid}", timeout)
        with self._cond:
            return self._subacks.pop(mid)

    def subscribe(self, filters: list[tuple[str, int]], timeout: float = TIMEOUT) -> list[int]:
        """SUBSCRIBE and return the granted QoS / reason codes of the SUBACK."""
        return self.wait_subscribed(self.subscribe_nowait(filters), timeout)

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> int:
        info = self.paho.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"{self.client_id}: publish failed ({info.rc})"
        return info.mid

    def wait_published(self, mid: int, timeout: float = TIMEOUT) -> int:
        self._wait(lambda: mid in self._pubacks, f"PUBACK/PUBCOMP for mid {mid}", timeout)
        with self._cond:
            return self._pubacks.pop(mid)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float = TIMEOUT,
    ) -> int:
        """Publish and wait until paho reports it done (PUBACK/PUBCOMP for QoS 1/2).

        Returns the reason code paho hands to on_publish (0 = success).
        """
        mid = self.publish_nowait(topic, payload, qos, retain, properties)
        return self.wait_published(mid, timeout)

    def expect(self, n: int, timeout: float = TIMEOUT) -> list[Received]:
        """Exactly the next ``n`` messages, or fail."""
        got = self.collect(timeout, limit=n)
        assert len(got) == n, (
            f"{self.client_id}: expected {n} message(s) within {timeout:g} s, got {len(got)}: {got}"
        )
        return got

    def collect(self, duration: float = QUIET, limit: int | None = None) -> list[Received]:
        """Whatever arrives within ``duration`` seconds (up to ``limit`` messages)."""
        got: list[Received] = []
        deadline = time.monotonic() + duration
        while limit is None or len(got) < limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                got.append(self.messages.get(timeout=remaining))
            except queue.Empty:
                break
        return got

    def drain(self) -> list[Received]:
        got: list[Received] = []
        while True:
            try:
                got.append(self.messages.get_nowait())
            except queue.Empty:
                return got


class SharedLoop:
    """One thread serving many paho clients through epoll.

    paho's own ``loop_start`` uses ``select()``, which cannot watch descriptors above 1023:
    past about 340 clients in one process their threads die silently. This loop drives
    paho's external-loop API (``loop_read``/``loop_write``/``loop_misc``) instead.
    """

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.clients: list[Client] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="paho-shared-loop", daemon=True)
        self.thread.start()

    def add(self, client: Client) -> None:
        sock = client.paho.socket()
        assert sock is not None, f"{client.client_id}: not connected"
        # With a write callback set, paho queues instead of writing from the caller's thread:
        # all socket I/O then happens here.
        client.paho.on_socket_register_write = lambda *_: None
        with self.lock:
            self.selector.register(sock, selectors.EVENT_READ, client)
            self.clients.append(client)

    def _run(self) -> None:
        last_misc = time.monotonic()
        while not self.stopping.is_set():
            with self.lock:
                ready = self.selector.select(timeout=0.02) if self.clients else []
                for key, _ in ready:
                    client: Client = key.data
                    if client.paho.loop_read(max_packets=10) != mqtt.MQTT_ERR_SUCCESS:
                        self.selector.unregister(key.fileobj)
                for client in self.clients:
                    if client.paho.want_write():
                        client.paho.loop_write()
                if time.monotonic() - last_misc > 1:
                    last_misc = time.monotonic()
                    for client in self.clients:
                        client.paho.loop_misc()
            if not ready:
                time.sleep(0.001)  # let other threads take the lock

    def stop(self) -> None:
        """Flush what is queued (a DISCONNECT, say) for up to 2 s, then stop and close."""
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and any(c.paho.want_write() for c in self.clients):
            time.sleep(0.02)
        self.stopping.set()
        self.thread.join(timeout=10)
        for client in self.clients:
            sock = client.paho.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        self.selector.close()


def payloads(messages: list[Received]) -> list[bytes]:
    return [m.payload for m in messages]


# -- raw MQTT on a socket (exact packets, garbage) --------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def mqtt_packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _varint(len(body)) + body


def connect_packet(client_id: str, protocol: int) -> bytes:
    v5 = protocol == MQTTv5
    header = _utf8("MQTT") + bytes([5 if v5 else 4, 0x02]) + struct.pack("!H", 30)
    if v5:
        header += b"\x00"  # no properties
    return mqtt_packet(0x10, header + _utf8(client_id))


class RawConnection:
    """A bare TCP connection speaking MQTT byte by byte."""

    def __init__(self, port: int, bind: str = "") -> None:
        source = (bind, 0) if bind else None
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT, source_address=source)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _take(self, n: int, deadline: float) -> bytes:
        while len(self.buffer) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError("connection closed while a packet was expected")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_packet(self, timeout: float = TIMEOUT) -> tuple[int, bytes]:
        """(first byte, body) of the next packet."""
        deadline = time.monotonic() + timeout
        first = self._take(1, deadline)[0]
        length, shift = 0, 0
        for _ in range(4):
            byte = self._take(1, deadline)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, self._take(length, deadline)

    def mqtt_connect(self, client_id: str, protocol: int) -> None:
        self.send(connect_packet(client_id, protocol))
        first, body = self.read_packet()
        assert first == 0x20, f"expected CONNACK, got packet type {first:#x}"
        assert body[1] == 0, f"CONNACK reason {body[1]:#x}"

    def closed_within(self, timeout: float) -> bool:
        """True once the peer closes (EOF or reset); False if still open at the deadline."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                if not self.sock.recv(65536):  # anything else (a DISCONNECT) is read past
                    return True
            except TimeoutError:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# -- fixtures and small helpers ---------------------------------------------------------------


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    """Factory: ``clients(port, client_id, protocol, **options)`` -> a connected Client."""
    made: list[Client] = []

    def make(port: int, client_id: str, protocol: int, **options: Any) -> Client:
        client = Client(port, client_id, protocol, **options)
        made.append(client)
        client.connect()
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture(params=list(PROTOCOLS), ids=[f"mqtt{p}" for p in PROTOCOLS])
def protocol(request: pytest.FixtureRequest) -> int:
    return PROTOCOLS[request.param]


@pytest.fixture(params=["direct", "proxy"])
def endpoint(
    request: pytest.FixtureRequest, mosquitto: Broker, start_proxy: Callable[..., Proxy]
) -> int:
    """The port clients connect to: Mosquitto itself, or the proxy in monitor mode."""
    if request.param == "direct":
        return mosquitto.port
    return start_proxy(mode="monitor", learning="1h").port


# What each scenario looked like straight to the broker, to compare the proxied run with.
_SEEN_DIRECT: dict[str, Any] = {}


@pytest.fixture
def same_as_direct(request: pytest.FixtureRequest) -> Callable[[Any], None]:
    """Record the direct run's observation; the proxied run must observe exactly the same."""
    key = request.node.name.replace("[proxy-", "[").replace("[direct-", "[")
    endpoint_name = request.node.callspec.params["endpoint"]

    def check(observed: Any) -> None:
        if endpoint_name == "direct":
            _SEEN_DIRECT[key] = observed
        elif key in _SEEN_DIRECT:
            assert observed == _SEEN_DIRECT[key], "the proxy changed what the receiver saw"

    return check


def find_alert(
    proxy: Proxy, src: str, dst: str, relation: str, state: str = "pending"
) -> dict[str, Any] | None:
    for alert in proxy.cli_json("alerts"):
        if (alert["src"], alert["dst"], alert["relation"], alert["state"]) == (
            src,
            dst,
            relation,
            state,
        ):
            return alert
    return None


def find_edge(proxy: Proxy, src: str, dst: str, relation: str) -> dict[str, Any] | None:
    for edge in proxy.cli_json("edges"):
        if (edge["src"], edge["dst"], edge["relation"]) == (src, dst, relation):
            return edge
    return None


def wait_learning_over(proxy: Proxy, services: set[str], timeout: float = 10) -> None:
    """Poll ``services --json`` until every service is past its learning phase."""

    def over() -> bool:
        done = proxy.cli("services", "--json")
        if done.returncode != 0:  # the daemon may not have written the db yet
            return False
        rows = json.loads(done.stdout)
        phases = {r["name"]: r["phase"] for r in rows}
        return services <= phases.keys() and all(p == "active" for p in phases.values())

    wait_until(over, timeout, interval=0.2, what=f"the learning phase of {sorted(services)} to end")


# -- a. transparency: direct and proxied runs look the same to the receiver -------------------


def test_publish_subscribe(
    endpoint: int, protocol: int, clients: Callable[..., Client], same_as_direct: Any
) -> None:
    sub = clients(endpoint, "ps-sub", protocol)
    pub = clients(endpoint, "ps-pub", protocol)
    assert sub.subscribe([("home/kitchen/temp", 1)]) == [1]

    props = None
    expected_props: tuple[tuple[str, str], ...] = ()
    if protocol == MQTTv5:
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "text/plain"
        props.UserProperty = [("unit", "celsius")]
        expected_props = (("content-type", "text/plain"), ("user:unit", "celsius"))
    assert pub.publish("home/kitchen/temp", b"21.5", qos=1, properties=props) == SUCCESS

    seen = sub.expect(1)
    assert seen == [Received("home/kitchen/temp", b"21.5", 1, False, expected_props)]
    assert sub.collect(0.3) == [], "a message arrived twice"
    same_as_direct(seen)


def test_retained_message_reaches_new_subscriber(
    endpoint: int, protocol: int, clients: Callable[..., Client], same_as_direct: Any
) -> None:
    pub = clients(endpoint, "ret-pub", protocol)
    nobody = NO_MATCHING_SUBSCRIBERS if protocol == MQTTv5 else SUCCESS
    assert pub.publish("retained/state", b"on", qos=1, retain=True) == nobody

    late = clients(endpoint, "ret-late", protocol)
    assert late.subscribe([("retained/#", 1)]) == [1]
    stored = late.expect(1)
    assert stored == [Received("retained/state", b"on", 1, True)]

    assert pub.publish("retained/state", b"off", qos=1, retain=True) == SUCCESS
    live = late.expect(1)
    assert live == [Received("retained/state", b"off", 1, False)]  # live: retain flag clear
    same_as_direct(stored + live)


def test_will_message_on_abrupt_close(
    endpoint: int, protocol: int, clients: Callable[..., Client], same_as_direct: Any
) -> None:
    watcher = clients(endpoint, "will-watcher", protocol)
    assert watcher.subscribe([("wills/#", 1)]) == [1]
    dying = clients(endpoint, "will-dying", protocol, will=("wills/dying", b"gone", 1, False))

    dying.kill()

    seen = watcher.expect(1, timeout=TIMEOUT)
    assert seen == [Received("wills/dying", b"gone", 1, False)]
    same_as_direct(seen)


def test_qos_round_trips(
    endpoint: int, protocol: int, clients: Callable[..., Client], same_as_direct: Any
) -> None:
    sub = clients(endpoint, "qos-sub", protocol)
    pub = clients(endpoint, "qos-pub", protocol)
    assert sub.subscribe([("qos/#", 2)]) == [2]

    for qos in (0, 1, 2):
        assert pub.publish(f"qos/{qos}", f"at qos {qos}".encode(), qos=qos) == SUCCESS

    seen = sorted(sub.expect(3))
    assert seen == [Received(f"qos/{q}", f"at qos {q}".encode(), q, False) for q in (0, 1, 2)]
    assert sub.collect(0.3) == [], "a message arrived twice"
    same_as_direct(seen)


def test_wildcard_subscriptions(
    endpoint: int, protocol: int, clients: Callable[..., Client], same_as_direct: Any
) -> None:
    plus = clients(endpoint, "wild-plus", protocol)
    hash_ = clients(endpoint, "wild-hash", protocol)
    pub = clients(endpoint, "wild-pub", protocol)
    assert plus.subscribe([("wild/+/temp", 1)]) == [1]
    assert hash_.subscribe([("wild/#", 1)]) == [1]

    topics = ["wild/kitchen/temp", "wild/kitchen/humidity", "wild/a/b/c", "wild", "other/temp"]
    codes = [pub.publish(topic, topic.encode(), qos=1) for topic in topics]
    nobody = NO_MATCHING_SUBSCRIBERS if protocol == MQTTv5 else SUCCESS
    assert codes == [SUCCESS] * 4 + [nobody]

    via_plus = sorted(plus.expect(1))
    via_hash = sorted(hash_.expect(4))
    assert [m.topic for m in via_plus] == ["wild/kitchen/temp"]
    assert [m.topic for m in via_hash] == sorted(topics[:4])  # "wild/#" also matches "wild"
    assert all(m.payload == m.topic.encode() for m in via_plus + via_hash)
    assert plus.collect(0.3) == [] and hash_.collect(0.1) == []
    same_as_direct((via_plus, via_hash))


@pytest.mark.parametrize("protocol", [MQTTv5], ids=["mqtt5"])
def test_topic_alias(
    endpoint: int, protocol: int, clients: Callable[..., Client], same_as_direct: Any
) -> None:
    sub = clients(endpoint, "alias-sub", protocol)
    pub = clients(endpoint, "alias-pub", protocol)
    assert sub.subscribe([("alias/#", 1)]) == [1]

    with_topic = Properties(PacketTypes.PUBLISH)
    with_topic.TopicAlias = 1
    assert pub.publish("alias/long/topic/name", b"one", qos=1, properties=with_topic) == SUCCESS
    alias_only = Properties(PacketTypes.PUBLISH)
    alias_only.TopicAlias = 1
    assert pub.publish("", b"two", qos=1, properties=alias_only) == SUCCESS

    seen = sub.expect(2)
    assert [(m.topic, m.payload) for m in seen] == [
        ("alias/long/topic/name", b"one"),
        ("alias/long/topic/name", b"two"),
    ]
    same_as_direct(seen)


def test_one_megabyte_payload(
    endpoint: int, protocol: int, clients: Callable[..., Client], same_as_direct: Any
) -> None:
    sub = clients(endpoint, "big-sub", protocol)
    pub = clients(endpoint, "big-pub", protocol)
    assert sub.subscribe([("big/blob", 1)]) == [1]
    payload = random.Random(1).randbytes(1024 * 1024)

    assert pub.publish("big/blob", payload, qos=1, timeout=15) == SUCCESS

    (seen,) = sub.expect(1, timeout=15)
    summary = (seen.topic, len(seen.payload), hashlib.sha256(seen.payload).hexdigest(), seen.qos)
    assert summary == ("big/blob", len(payload), hashlib.sha256(payload).hexdigest(), 1)
    same_as_direct(summary)


def test_session_resume(
    endpoint: int, protocol: int, clients: Callable[..., Client], same_as_direct: Any
) -> None:
    session = {"clean": False, "session_expiry": 300}
    if protocol == MQTTv5:  # a fresh session that outlives the connection
        first = clients(endpoint, "resume-sub", protocol, clean=True, session_expiry=300)
    else:
        first = clients(endpoint, "resume-sub", protocol, **session)
    assert first.subscribe([("resume/t", 1)]) == [1]
    first.disconnect()

    pub = clients(endpoint, "resume-pub", protocol)
    for i in range(3):
        assert pub.publish("resume/t", f"while away {i}".encode(), qos=1) == SUCCESS

    again = Client(endpoint, "resume-sub", protocol, **session)
    try:
        session_present = again.connect()
        seen = again.expect(3)
    finally:
        again.close()
    assert session_present is True
    assert seen == [Received("resume/t", f"while away {i}".encode(), 1, False) for i in range(3)]
    same_as_direct((session_present, seen))


# -- b. protect mode --------------------------------------------------------------------------


@dataclass
class Site:
    """Three services that learned for 2 s through a protect-mode proxy:

    - ``watch`` subscribed ``t/c`` and received ``pub``'s first message on it;
    - ``pub`` published ``t/c`` (before ``sub`` subscribed) and ``t/a``;
    - ``sub`` subscribed ``t/#`` and received ``t/a`` (never ``t/c``).
    """

    proxy: Proxy
    protocol: int
    pub: Client
    sub: Client
    watch: Client


def learned_site(proxy: Proxy, protocol: int, clients: Callable[..., Client]) -> Site:
    port = proxy.port
    watch = clients(port, "watch", protocol)
    assert watch.subscribe([("t/c", 1)]) == [1]
    pub = clients(port, "pub", protocol)
    assert pub.publish("t/c", b"c while learning", qos=1) == SUCCESS
    assert payloads(watch.expect(1)) == [b"c while learning"]

    sub = clients(port, "sub", protocol)
    assert sub.subscribe([("t/#", 1)]) == [1]
    assert pub.publish("t/a", b"a while learning", qos=1) == SUCCESS
    assert payloads(sub.expect(1)) == [b"a while learning"]

    wait_learning_over(proxy, {"pub", "sub", "watch"})
    return Site(proxy, protocol, pub, sub, watch)


def blocked_publish_code(protocol: int) -> int:
    """What paho reports for a blocked QoS 1 publish: Mosquitto's ACL answer."""
    return NOT_AUTHORIZED if protocol == MQTTv5 else SUCCESS


def test_protect_blocks_new_publish(
    protocol: int, start_proxy: Callable[..., Proxy], clients: Callable[..., Client]
) -> None:
    site = learned_site(start_proxy(mode="protect", learning="2s"), protocol, clients)
    pub, sub = site.pub, site.sub

    # QoS 1 to a topic pub never used: not forwarded, answered by the proxy.
    assert pub.publish("t/new", b"new qos1", qos=1) == blocked_publish_code(protocol)
    assert sub.collect(QUIET) == [], "a blocked QoS 1 publish reached the subscriber"

    # The learned path still works.
    assert pub.publish("t/a", b"a after learning", qos=1) == SUCCESS
    assert payloads(sub.expect(1)) == [b"a after learning"]
    assert pub.unexpected_disconnects == 0 and sub.unexpected_disconnects == 0


def test_protect_blocks_new_publish_qos2(
    protocol: int, start_proxy: Callable[..., Proxy], clients: Callable[..., Client]
) -> None:
    """QoS 2 checked on the wire: paho does not report a PUBREC's reason code."""
    site = learned_site(start_proxy(mode="protect", learning="2s"), protocol, clients)
    site.pub.disconnect()  # the raw connection below is service "pub" now
    raw = RawConnection(site.proxy.port)
    try:
        raw.mqtt_connect("pub", protocol)
        body = _utf8("t/new") + struct.pack("!H", 7)
        if protocol == MQTTv5:
            body += b"\x00"
        raw.send(mqtt_packet(0x34, body + b"new qos2"))  # PUBLISH, QoS 2, packet id 7

        first, pubrec = raw.read_packet()
        assert first == 0x50, f"expected PUBREC, got packet type {first:#x}"
        assert pubrec[:2] == struct.pack("!H", 7)
        if protocol == MQTTv5:
            assert len(pubrec) >= 3 and pubrec[2] == NOT_AUTHORIZED, f"PUBREC {pubrec.hex()}"
        else:
            assert pubrec == struct.pack("!H", 7), f"a 3.1.1 PUBREC is plain: {pubrec.hex()}"
            raw.send(mqtt_packet(0x62, struct.pack("!H", 7)))  # PUBREL
            first, pubcomp = raw.read_packet()
            assert (first, pubcomp) == (0x70, struct.pack("!H", 7)), "expected PUBCOMP for 7"
        raw.send(b"\xe0\x00")  # DISCONNECT
    finally:
        raw.close()

    assert site.sub.collect(QUIET) == [], "a blocked QoS 2 publish reached the subscriber"
    pub = clients(site.proxy.port, "pub", protocol)
    assert pub.publish("t/a", b"a after qos2", qos=2) == SUCCESS
    assert payloads(site.sub.expect(1)) == [b"a after qos2"]


def test_protect_subscribe_drops_only_blocked_filters(
    protocol: int, start_proxy: Callable[..., Proxy], clients: Callable[..., Client]
) -> None:
    site = learned_site(start_proxy(mode="protect", learning="2s"), protocol, clients)
    pub, sub = site.pub, site.sub
    refused = NOT_AUTHORIZED if protocol == MQTTv5 else SUBACK_FAILURE

    # "t/#" is sub's learned filter; "x/new" was never seen. (A filter "t/a" would be a new
    # subscribe edge too, and rightly refused: sub learned "t/#", not "t/a".)
    assert sub.subscribe([("t/#", 1), ("x/new", 1)]) == [1, refused]

    assert pub.publish("t/a", b"a after subscribe", qos=1) == SUCCESS
    assert payloads(sub.expect(1)) == [b"a after subscribe"]
    assert sub.collect(0.3) == [], "a message arrived twice"


def test_protect_blocks_unlearned_delivery(
    protocol: int, start_proxy: Callable[..., Proxy], clients: Callable[..., Client]
) -> None:
    site = learned_site(start_proxy(mode="protect", learning="2s"), protocol, clients)
    pub, sub, watch = site.pub, site.sub, site.watch

    # pub -> t/c is learned, t/c -> watch is learned, t/c -> sub never was.
    assert pub.publish("t/c", b"c after learning", qos=1) == SUCCESS
    assert payloads(watch.expect(1)) == [b"c after learning"]
    assert sub.collect(QUIET) == [], "a delivery that was never learned reached sub"

    # The dropped delivery was acknowledged for sub: sub's session keeps working.
    assert pub.publish("t/a", b"a after dropped delivery", qos=1) == SUCCESS
    assert payloads(sub.expect(1)) == [b"a after dropped delivery"]
    assert sub.unexpected_disconnects == 0


def test_protect_approve_then_deny(
    protocol: int, start_proxy: Callable[..., Proxy], clients: Callable[..., Client]
) -> None:
    site = learned_site(start_proxy(mode="protect", learning="2s"), protocol, clients)
    proxy, pub, sub = site.proxy, site.pub, site.sub
    blocked = blocked_publish_code(protocol)

    assert pub.publish("t/new", b"blocked", qos=1) == blocked
    alert = wait_until(
        lambda: find_alert(proxy, "pub", "t/new", "publish"), 3, what="the alert for pub -> t/new"
    )
    approved = proxy.cli("approve", str(alert["id"]))
    assert approved.returncode == 0, approved.stderr

    # Now the publish passes. Its delivery to sub is an edge of its own (t/new -> sub,
    # deliver), never learned, so it is pending and blocked in turn until approved.
    def forwarded() -> dict[str, Any] | None:
        code = pub.publish("t/new", b"publish approved", qos=1)
        if protocol == MQTTv5 and code != SUCCESS:
            return None
        return find_alert(proxy, "t/new", "sub", "deliver")

    deliver_alert = wait_until(
        forwarded, 3, interval=0.2, what="pub -> t/new to pass after approve"
    )
    assert sub.collect(0.3) == [], "delivered before t/new -> sub was approved"
    approved = proxy.cli("approve", str(deliver_alert["id"]))
    assert approved.returncode == 0, approved.stderr

    def delivered() -> bool:
        pub.publish("t/new", b"both approved", qos=1)
        return any(m.topic == "t/new" for m in sub.collect(0.3))

    wait_until(delivered, 3, what="t/new to reach sub after both approvals")
    sub.collect(0.3)

    # Deny the approved publish edge: blocked again within 3 s.
    denied = proxy.cli("deny", str(alert["id"]))
    assert denied.returncode == 0, denied.stderr

    def blocked_again() -> bool:
        code = pub.publish("t/new", b"after deny", qos=1)
        arrived = sub.collect(0.3)
        return code == blocked and not arrived

    wait_until(blocked_again, 3, what="pub -> t/new to be blocked after deny")
    sub.collect(0.5)
    assert pub.publish("t/new", b"still denied", qos=1) == blocked
    assert sub.collect(QUIET) == [], "a denied publish reached the subscriber"


# -- c. monitor mode --------------------------------------------------------------------------


def test_monitor_mode_alerts_but_delivers(
    protocol: int, start_proxy: Callable[..., Proxy], clients: Callable[..., Client]
) -> None:
    site = learned_site(start_proxy(mode="monitor", learning="2s"), protocol, clients)

    assert site.pub.publish("t/new", b"new in monitor", qos=1) == SUCCESS
    assert site.sub.expect(1) == [Received("t/new", b"new in monitor", 1, False)]
    alert = wait_until(
        lambda: find_alert(site.proxy, "pub", "t/new", "publish"),
        3,
        what="a pending alert for pub -> t/new",
    )
    assert alert["kind"] == "new-edge"
    assert find_alert(site.proxy, "t/new", "sub", "deliver") is not None


# -- d. garbage -------------------------------------------------------------------------------


def _random_garbage(seed: int) -> bytes:
    data = bytearray(random.Random(seed).randbytes(64))
    if data[0] >> 4 == 1:  # never a CONNECT header: the proxy must not wait for more
        data[0] ^= 0x80
    return bytes(data)


MALFORMED_AFTER_CONNECT = {
    "reserved packet type 0": b"\x00\x00",
    "PUBLISH with QoS 3": mqtt_packet(0x36, _utf8("g/t") + b"\x00\x01" + b"x"),
    "topic length past the packet": mqtt_packet(0x30, b"\xff\xff" + b"ab"),
    "SUBSCRIBE with wrong flags": mqtt_packet(0x80, b"\x00\x01" + _utf8("g/#") + b"\x00"),
    "remaining length of 5 bytes": b"\x30\xff\xff\xff\xff\x7f",
    "second CONNECT": connect_packet("garbage-conn", MQTTv311),
}


def test_garbage_disconnects_only_its_sender(
    start_proxy: Callable[..., Proxy], clients: Callable[..., Client]
) -> None:
    proxy = start_proxy(mode="monitor", learning="1h")
    alive = clients(proxy.port, "alive", MQTTv311)
    assert alive.subscribe([("alive/t", 1)]) == [1]
    rounds = 0

    def round_trip() -> None:
        nonlocal rounds
        rounds += 1
        payload = f"still here {rounds}".encode()
        assert alive.publish("alive/t", payload, qos=1) == SUCCESS
        assert payloads(alive.expect(1)) == [payload]

    round_trip()
    for seed in range(5):
        raw = RawConnection(proxy.port)
        try:
            raw.send(_random_garbage(seed))
            assert raw.closed_within(5), f"64 random bytes (seed {seed}): still connected"
        finally:
            raw.close()
        round_trip()

    for name, packet in MALFORMED_AFTER_CONNECT.items():
        raw = RawConnection(proxy.port)
        try:
            raw.mqtt_connect("garbage-conn", MQTTv311)
            raw.send(packet)
            assert raw.closed_within(5), f"CONNECT then {name}: still connected after 5 s"
        finally:
            raw.close()
        round_trip()

    assert alive.unexpected_disconnects == 0
    assert proxy.process.poll() is None, f"the proxy died:\n{proxy.stderr}"


# -- e. load ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_thousand_clients(start_proxy: Callable[..., Proxy]) -> None:
    raise_nofile_limit()
    proxy = start_proxy(mode="monitor", learning="1h")
    n = 1000
    began = time.monotonic()
    loops = [SharedLoop() for _ in range(2)]
    fleet = [Client(proxy.port, f"load-{i}", MQTTv311) for i in range(n)]
    try:
        for i, client in enumerate(fleet):
            client.start(loops[i % len(loops)])
        for client in fleet:
            client.wait_connected(timeout=60)
        connected = time.monotonic()

        subs = [c.subscribe_nowait([(f"load/{i}", 1)]) for i, c in enumerate(fleet)]
        for client, mid in zip(fleet, subs, strict=True):
            assert client.wait_subscribed(mid, timeout=60) == [1]

        mids = [c.publish_nowait(f"load/{i}", f"msg {i}".encode(), 1) for i, c in enumerate(fleet)]
        for client, mid in zip(fleet, mids, strict=True):
            assert client.wait_published(mid, timeout=60) == SUCCESS

        deadline = began + 120
        for i, client in enumerate(fleet):
            remaining = max(0.1, deadline - time.monotonic())
            assert client.expect(1, timeout=remaining) == [
                Received(f"load/{i}", f"msg {i}".encode(), 1, False)
            ]
        delivered = time.monotonic()
        time.sleep(0.5)  # bounded: a last look for duplicates
        duplicates = {c.client_id: c.drain() for c in fleet if not c.messages.empty()}
        assert duplicates == {}, f"messages arrived twice: {duplicates}"
    finally:
        for client in fleet:
            with contextlib.suppress(Exception):
                client.paho.disconnect()
        for loop in loops:
            loop.stop()
    elapsed = delivered - began
    print(f"1000 clients: connected in {connected - began:.1f} s, all delivered in {elapsed:.1f} s")
    assert elapsed < 120
    assert proxy.process.poll() is None, f"the proxy died:\n{proxy.stderr}"


# -- f. shutdown ------------------------------------------------------------------------------


def test_sigterm_flushes_counters(
    protocol: int, start_proxy: Callable[..., Proxy], clients: Callable[..., Client]
) -> None:
    proxy = start_proxy(mode="monitor", learning="1h")
    sub = clients(proxy.port, "count-sub", protocol)
    pub = clients(proxy.port, "count-pub", protocol)
    assert sub.subscribe([("count/t", 1)]) == [1]
    n = 25
    for i in range(n):
        assert pub.publish("count/t", f"m{i}".encode(), qos=1) == SUCCESS
    assert len(sub.expect(n)) == n

    proxy.stop()  # asserts exit status 0

    wait_until(
        lambda: pub.unexpected_disconnects and sub.unexpected_disconnects, 5, what="clients cut off"
    )
    edge = find_edge(proxy, "count-pub", "count/t", "publish")
    assert edge is not None, "the publish edge was not stored"
    assert edge["count"] == n
    deliver = find_edge(proxy, "count/t", "count-sub", "deliver")
    assert deliver is not None and deliver["count"] == n
    subscribe = find_edge(proxy, "count-sub", "count/t", "subscribe")
    assert subscribe is not None and subscribe["count"] == 1
