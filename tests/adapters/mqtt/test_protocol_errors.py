"""Protocol errors: a client that breaks MQTT gets from the proxy what Mosquitto answers.

Each case sends the same raw bytes straight to Mosquitto and through the proxy in monitor mode,
and expects the client to see the same thing: a DISCONNECT with the same reason code before the
close, or a close without one. Whether the close is a FIN or a reset is not compared. The
expected answers were measured against Mosquitto 2.0.11 and are checked here on every run.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from paho.mqtt.client import MQTTv5, MQTTv311

from commgraph.adapters.mqtt.codec import (
    MALFORMED_PACKET,
    PACKET_TOO_LARGE,
    PROTOCOL_ERROR,
    TOPIC_ALIAS_INVALID,
)
from conftest import Broker, Proxy, launch_mosquitto, stop_mosquitto

from .test_proxy_integration import TIMEOUT, RawConnection, connect_packet, mqtt_packet

BROKER_MAX_PACKET = 1000  # Mosquitto's max_packet_size here; the proxy keeps its own 16 MiB
BARE_CLOSE = "bare close"
STILL_OPEN = "still open"  # the PINGREQ sent after the case was answered
PINGREQ = b"\xc0\x00"

Answer = int | str  # a DISCONNECT's reason code, BARE_CLOSE or STILL_OPEN


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto with a max_packet_size (it advertises Topic Alias Maximum 10 by default).

    Overrides conftest's ``mosquitto``, so ``start_proxy`` relays to this one.
    """
    broker = launch_mosquitto(tmp_path, extra=f"max_packet_size {BROKER_MAX_PACKET}\n")
    try:
        yield broker
    finally:
        stop_mosquitto(broker)


def _string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def publish5(
    topic: str | bytes,
    properties: bytes = b"",
    *,
    qos: int = 0,
    packet_id: int = 1,
    payload: bytes = b"x",
) -> bytes:
    """A v5 PUBLISH from raw parts, faults included."""
    head = _string(topic) + (struct.pack("!H", packet_id) if qos else b"")
    assert len(properties) < 128
    return mqtt_packet(0x30 | qos << 1, head + bytes((len(properties),)) + properties + payload)


def alias(value: int) -> bytes:
    return b"\x23" + struct.pack("!H", value)


def publish_of_size(total: int) -> bytes:
    """A valid v5 QoS 0 PUBLISH of exactly ``total`` bytes (128 to 16,383)."""
    head = _string("errors/big") + b"\x00"
    packet = mqtt_packet(0x30, head + b"x" * (total - 3 - len(head)))
    assert len(packet) == total
    return packet


# (id, protocol, CONNECT first, bytes sent, what Mosquitto 2.0.11 answers)
CASES: list[tuple[str, int, bool, bytes, Answer]] = [
    ("topic alias 0", MQTTv5, True, publish5("a/b", alias(0)), MALFORMED_PACKET),
    ("topic alias above maximum", MQTTv5, True, publish5("a/b", alias(11)), TOPIC_ALIAS_INVALID),
    ("topic alias at maximum", MQTTv5, True, publish5("a/b", alias(10)) + PINGREQ, STILL_OPEN),
    ("topic alias never defined", MQTTv5, True, publish5("", alias(5)), PROTOCOL_ERROR),
    ("wildcard in topic name", MQTTv5, True, publish5("a/+"), PROTOCOL_ERROR),
    # Two faults in one PUBLISH: Mosquitto checks the encoding, the alias, then wildcards.
    ("wildcard, alias too high", MQTTv5, True, publish5("a/#", alias(11)), TOPIC_ALIAS_INVALID),
    ("bad UTF-8, alias too high", MQTTv5, True, publish5(b"a\xff", alias(11)), MALFORMED_PACKET),
    ("QoS 3", MQTTv5, True, mqtt_packet(0x36, _string("a/b") + b"\x00\x01\x00"), MALFORMED_PACKET),
    ("packet identifier 0", MQTTv5, True, publish5("a/b", qos=1, packet_id=0), PROTOCOL_ERROR),
    ("unknown property", MQTTv5, True, publish5("a/b", b"\x50\x00"), MALFORMED_PACKET),
    ("repeated property", MQTTv5, True, publish5("a/b", b"\x01\x00\x01\x00"), BARE_CLOSE),
    (
        "SUBSCRIBE flags",
        MQTTv5,
        True,
        mqtt_packet(0x80, b"\x00\x01\x00" + _string("a") + b"\x00"),
        MALFORMED_PACKET,
    ),
    (
        "SUBSCRIBE without filters",
        MQTTv5,
        True,
        mqtt_packet(0x82, b"\x00\x01\x00"),
        MALFORMED_PACKET,
    ),
    ("PUBACK packet identifier 0", MQTTv5, True, mqtt_packet(0x40, b"\x00\x00"), BARE_CLOSE),
    ("packet type 0", MQTTv5, True, b"\x00\x00", PROTOCOL_ERROR),
    ("packet too large", MQTTv5, True, publish_of_size(2 * BROKER_MAX_PACKET), PACKET_TOO_LARGE),
    ("packet too large, header only", MQTTv5, True, b"\x30\x88\x27", PACKET_TOO_LARGE),
    # Mosquitto counts the type byte and the remaining length, not the length's own bytes:
    # remaining length 999 (1002 bytes in all) is taken.
    ("packet at the size limit", MQTTv5, True, publish_of_size(1002) + PINGREQ, STILL_OPEN),
    ("second CONNECT", MQTTv5, True, connect_packet("errors-again", MQTTv5), BARE_CLOSE),
    ("empty AUTH", MQTTv5, True, b"\xf0\x00", BARE_CLOSE),
    ("PUBLISH before CONNECT", MQTTv5, False, publish5("a/b"), BARE_CLOSE),
    ("3.1.1 QoS 3", MQTTv311, True, mqtt_packet(0x36, _string("a/b") + b"\x00\x01"), BARE_CLOSE),
    ("3.1.1 wildcard", MQTTv311, True, mqtt_packet(0x30, _string("a/+")), BARE_CLOSE),
    ("3.1.1 packet type 0", MQTTv311, True, b"\x00\x00", BARE_CLOSE),
    ("3.1.1 packet too large", MQTTv311, True, publish_of_size(2000), BARE_CLOSE),
]


def answer_to(raw: RawConnection) -> Answer:
    """Read until the peer closes (or answers the PINGREQ); what did the client get?"""
    data = raw.buffer
    deadline = time.monotonic() + TIMEOUT
    while data[:1] != b"\xd0":  # PINGRESP
        raw.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = raw.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        except TimeoutError:
            pytest.fail(f"neither closed nor answered within {TIMEOUT:g} s; got {data!r}")
        if not chunk:
            if not data:
                return BARE_CLOSE
            assert data[0] == 0xE0, f"expected DISCONNECT before the close, got {data!r}"
            return data[2] if data[1] else 0
        data += chunk
    return STILL_OPEN


def answer(port: int, client_id: str, protocol: int, connect: bool, packet: bytes) -> Answer:
    """Connect (unless not ``connect``), send ``packet``, and tell what came back."""
    raw = RawConnection(port)
    try:
        if connect:
            raw.mqtt_connect(client_id, protocol)
        raw.send(packet)
        return answer_to(raw)
    finally:
        raw.close()


@pytest.mark.parametrize(
    ("protocol", "connect", "packet", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_the_proxy_answers_a_protocol_error_as_mosquitto_does(
    mosquitto: Broker,
    start_proxy: Callable[..., Proxy],
    protocol: int,
    connect: bool,
    packet: bytes,
    expected: Answer,
) -> None:
    proxy = start_proxy(mode="monitor", learning="1h")
    direct = answer(mosquitto.port, "errors-direct", protocol, connect, packet)
    assert direct == expected, "Mosquitto itself answers differently than measured"
    assert answer(proxy.port, "errors-proxied", protocol, connect, packet) == direct
    assert proxy.process.poll() is None, f"the proxy died:\n{proxy.stderr}"


def test_packets_before_the_bad_one_still_reach_the_broker(
    mosquitto: Broker, start_proxy: Callable[..., Proxy]
) -> None:
    proxy = start_proxy(mode="monitor", learning="1h")
    subscribe = mqtt_packet(0x82, b"\x00\x01\x00" + _string("errors/before") + b"\x00")
    seen = []
    for port, name in ((mosquitto.port, "direct"), (proxy.port, "proxied")):
        sub = RawConnection(port)
        pub = RawConnection(port)
        try:
            sub.mqtt_connect(f"sub-{name}", MQTTv5)
            sub.send(subscribe)
            assert sub.read_packet()[0] == 0x90  # SUBACK
            pub.mqtt_connect(f"pub-{name}", MQTTv5)
            pub.send(publish5("errors/before", payload=b"kept") + publish5("a/b", alias(0)))
            got = answer_to(pub)
            first, body = sub.read_packet()
            seen.append((got, first, body.endswith(b"kept")))
        finally:
            sub.close()
            pub.close()
    assert seen[0] == (MALFORMED_PACKET, 0x30, True)
    assert seen[1] == seen[0]
