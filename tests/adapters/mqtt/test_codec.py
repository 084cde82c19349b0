from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commgraph.adapters.mqtt.codec import (
    MALFORMED_PACKET,
    PACKET_TOO_LARGE,
    PROTOCOL_ERROR,
    TOPIC_ALIAS_INVALID,
    Ack,
    Connack,
    Connect,
    Disconnect,
    MQTTDecodeError,
    MQTTDecoder,
    Other,
    Packet,
    PacketType,
    Publish,
    Suback,
    Subscribe,
    Unsubscribe,
    encode_ack,
    encode_auth,
    encode_connack,
    encode_connect,
    encode_disconnect,
    encode_pingreq,
    encode_pingresp,
    encode_publish,
    encode_suback,
    encode_subscribe,
    encode_unsuback,
    encode_unsubscribe,
    with_topic,
)
from commgraph.errors import DecodeError

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ACKS = (PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBREL, PacketType.PUBCOMP)

# --- v5 property bytes, written by hand from the spec's property table ---


def u8(ident: int, value: int) -> bytes:
    return bytes((ident, value))


def u16(ident: int, value: int) -> bytes:
    return bytes((ident,)) + value.to_bytes(2, "big")


def u32(ident: int, value: int) -> bytes:
    return bytes((ident,)) + value.to_bytes(4, "big")


def text(ident: int, value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return bytes((ident,)) + len(data).to_bytes(2, "big") + data


def pair(key: str, value: str) -> bytes:
    return text(0x26, key) + text(0, value)[1:]


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def varprop(ident: int, value: int) -> bytes:
    return bytes((ident,)) + varint(value)


def frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def client(level: int = 4, **kwargs: Any) -> MQTTDecoder:
    """A client-direction decoder that has already seen a CONNECT of ``level``."""
    decoder = MQTTDecoder(from_client=True, **kwargs)
    decoder.feed(encode_connect("c", protocol_level=level))
    return decoder


def server(level: int | None = 4) -> MQTTDecoder:
    return MQTTDecoder(from_client=False, protocol_level=level)


def publishes_of(packets: list[Packet]) -> list[Publish]:
    return [p for p in packets if isinstance(p, Publish)]


def one(decoder: MQTTDecoder, data: bytes) -> Packet:
    [packet] = decoder.feed(data)
    assert packet.raw == data
    return packet


# --- real client bytes: paho-mqtt talking to a socket that only listens ---


def paho_bytes(protocol: int, script: Callable[[Any], None]) -> bytes:
    """What paho sends: CONNECT (user, password, will), ``script``'s packets, DISCONNECT."""
    mqtt = pytest.importorskip("paho.mqtt.client")
    listener = socket.create_server(("127.0.0.1", 0))
    received = bytearray()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            while chunk := conn.recv(65536):
                received.extend(chunk)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sensor-1", protocol=protocol)
    paho.username_pw_set("alice", "secret")
    paho.will_set("dead/sensor-1", b"bye", qos=1, retain=True)
    paho.connect("127.0.0.1", listener.getsockname()[1], keepalive=30)
    script(paho)
    paho.disconnect()  # closes the socket, so the thread sees the end
    thread.join(5)
    listener.close()
    return bytes(received)


@pytest.mark.parametrize(("protocol", "level"), [(3, 3), (4, 4), (5, 5)])
def test_paho_client_session_decodes(protocol: int, level: int) -> None:
    pytest.importorskip("paho.mqtt.client")
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    def script(paho: Any) -> None:
        properties = None
        if level == 5:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.MessageExpiryInterval = 60
            properties.ContentType = "application/json"
            properties.UserProperty = [("a", "b"), ("c", "d")]
            properties.TopicAlias = 7
        paho.publish("home/kitchen/temp", b"21.5", qos=1, properties=properties)
        paho.publish("home/hall", b"", retain=True)
        paho.subscribe([("home/#", 1), ("a/+/b", 2)])
        paho.unsubscribe("home/#")

    data = paho_bytes(protocol, script)
    packets = MQTTDecoder(from_client=True).feed(data)
    assert b"".join(p.raw for p in packets) == data
    connect_packet, pub1, pub2, sub, unsub, disc = packets
    assert connect_packet == Connect(
        raw=connect_packet.raw,
        protocol_level=level,
        client_id="sensor-1",
        username="alice",
        clean_start=True,
        keep_alive=30,
        will_topic="dead/sensor-1",
        will_qos=1,
        will_retain=True,
    )
    assert isinstance(pub1, Publish)
    assert (pub1.topic, pub1.qos, pub1.packet_id, pub1.payload_size) == (
        "home/kitchen/temp",
        1,
        1,
        4,
    )
    assert pub1.topic_alias == (7 if level == 5 else None)
    assert isinstance(pub2, Publish)
    assert (pub2.topic, pub2.qos, pub2.retain, pub2.packet_id, pub2.payload_size) == (
        "home/hall",
        0,
        True,
        None,
        0,
    )
    assert isinstance(sub, Subscribe)
    assert sub.filters == (("home/#", 1), ("a/+/b", 2))
    assert isinstance(unsub, Unsubscribe)
    assert unsub.filters == ("home/#",)
    assert disc == Disconnect(raw=b"\xe0\x00", reason_code=0)


# --- every packet type, both versions ---


@pytest.mark.parametrize("level", [3, 4, 5])
def test_connect(level: int) -> None:
    data = encode_connect(
        "dev-1",
        protocol_level=level,
        username="bob",
        password=b"pw",
        clean_start=False,
        keep_alive=600,
        will_topic="dead/dev-1",
        will_payload=b"gone",
        will_qos=2,
    )
    decoder = MQTTDecoder(from_client=True)
    assert one(decoder, data) == Connect(
        raw=data,
        protocol_level=level,
        client_id="dev-1",
        username="bob",
        clean_start=False,
        keep_alive=600,
        will_topic="dead/dev-1",
        will_qos=2,
        will_retain=False,
    )
    assert decoder.protocol_level == level


def test_connect_v5_properties_and_will_properties_are_skipped() -> None:
    properties = u32(0x11, 3600) + u16(0x21, 20) + pair("k", "v") + text(0x15, "SCRAM")
    will_properties = u32(0x18, 5) + u8(0x01, 1) + text(0x03, "text/plain") + text(0x09, b"\x00")
    body = (
        text(0, "MQTT")[1:]
        + bytes((5, 0b1110_0110))  # user, password, will retain, will QoS 0, will, clean
        + (10).to_bytes(2, "big")
        + varint(len(properties))
        + properties
        + text(0, "id")[1:]
        + varint(len(will_properties))
        + will_properties
        + text(0, "will/topic")[1:]
        + text(0, b"\xff\xfe")[1:]
        + text(0, "u")[1:]
        + text(0, b"p")[1:]
    )
    packet = one(MQTTDecoder(from_client=True), frame(0x10, body))
    assert isinstance(packet, Connect)
    assert (packet.client_id, packet.will_topic, packet.will_retain, packet.username) == (
        "id",
        "will/topic",
        True,
        "u",
    )


def test_connect_v5_password_without_username_is_allowed() -> None:
    data = encode_connect("x", protocol_level=5, password=b"token")
    packet = one(MQTTDecoder(from_client=True), data)
    assert isinstance(packet, Connect)
    assert packet.username is None


@pytest.mark.parametrize("level", [4, 5])
def test_connack(level: int) -> None:
    v5 = level == 5
    properties = u16(0x22, 10) + text(0x12, "auto-1") + u8(0x24, 1) + u32(0x27, 1000) if v5 else b""
    data = encode_connack(True, 0, v5=v5, properties=properties)
    assert one(server(level), data) == Connack(
        raw=data,
        session_present=True,
        reason_code=0,
        topic_alias_maximum=10 if v5 else 0,
        maximum_packet_size=1000 if v5 else None,
    )
    refused = encode_connack(False, 0x86 if v5 else 5, v5=v5)
    assert one(server(level), refused) == Connack(
        raw=refused, session_present=False, reason_code=refused[3]
    )


def test_v3_connack_to_a_v5_client_decodes() -> None:
    assert one(server(5), b"\x20\x02\x00\x01") == Connack(
        raw=b"\x20\x02\x00\x01", session_present=False, reason_code=1
    )


def test_server_decodes_as_311_until_told() -> None:
    decoder = server(None)
    assert isinstance(one(decoder, encode_connack(v5=False)), Connack)
    v5_puback = encode_ack(PacketType.PUBACK, 3, 0x10, v5=True)
    with pytest.raises(MQTTDecodeError):
        server(None).feed(v5_puback)
    decoder.protocol_level = 5
    assert one(decoder, v5_puback) == Ack(
        raw=v5_puback, type=PacketType.PUBACK, packet_id=3, reason_code=0x10
    )


@pytest.mark.parametrize("level", [3, 4, 5])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish(level: int, qos: int) -> None:
    packet_id = 513 if qos else None
    data = encode_publish(
        "a/b", b"hello", qos=qos, retain=True, dup=qos > 0, packet_id=packet_id, v5=level == 5
    )
    for decoder in (client(level), server(level)):
        assert one(decoder, data) == Publish(
            raw=data,
            topic="a/b",
            qos=qos,
            retain=True,
            dup=qos > 0,
            packet_id=packet_id,
            payload_size=5,
            topic_alias=None,
            topic_in_packet=True,
        )


def test_publish_dup_with_qos0_passes() -> None:
    packet = one(client(), frame(0x38, text(0, "t")[1:] + b"p"))
    assert isinstance(packet, Publish)
    assert packet.dup
    assert packet.qos == 0


def test_publish_v5_with_several_properties() -> None:
    properties = (
        u32(0x02, 3600)
        + text(0x03, "application/json")
        + pair("trace", "abc")
        + pair("trace", "def")
        + u16(0x23, 4)
        + u8(0x01, 1)
        + text(0x08, "reply/here")
        + text(0x09, b"\x01\x02")
    )
    payload = b'{"t": 21.5}'
    data = encode_publish("home/t", payload, qos=1, packet_id=9, v5=True, properties=properties)
    packet = one(client(5), data)
    assert packet == Publish(
        raw=data,
        topic="home/t",
        qos=1,
        retain=False,
        dup=False,
        packet_id=9,
        payload_size=len(payload),
        topic_alias=4,
        topic_in_packet=True,
    )


def test_publish_subscription_identifiers_from_server() -> None:
    properties = varprop(0x0B, 1) + varprop(0x0B, 300_000)
    data = encode_publish("x", b"12", v5=True, properties=properties)
    packet = one(server(5), data)
    assert isinstance(packet, Publish)
    assert packet.payload_size == 2


def test_topic_alias_define_then_use_then_redefine() -> None:
    decoder = client(5)
    define = encode_publish("home/a", b"1", v5=True, properties=u16(0x23, 1))
    use = encode_publish("", b"22", v5=True, properties=u16(0x23, 1))
    redefine = encode_publish("home/b", b"333", v5=True, properties=u16(0x23, 1))
    packets = decoder.feed(define + use + redefine + use)
    assert all(isinstance(p, Publish) for p in packets)
    seen = [
        (p.topic, p.topic_in_packet, p.topic_alias, p.payload_size) for p in publishes_of(packets)
    ]
    assert seen == [
        ("home/a", True, 1, 1),
        ("home/a", False, 1, 2),
        ("home/b", True, 1, 3),
        ("home/b", False, 1, 2),
    ]


def test_topic_aliases_belong_to_one_direction() -> None:
    client(5).feed(encode_publish("t", b"", v5=True, properties=u16(0x23, 2)))
    with pytest.raises(MQTTDecodeError, match="alias 2"):
        server(5).feed(encode_publish("", b"", v5=True, properties=u16(0x23, 2)))


def test_unknown_topic_alias_is_an_error() -> None:
    with pytest.raises(MQTTDecodeError, match="never defined"):
        client(5).feed(encode_publish("", b"x", v5=True, properties=u16(0x23, 3)))


def test_with_topic_writes_the_resolved_topic() -> None:
    decoder = client(5)
    properties = u32(0x02, 10) + u16(0x23, 5) + pair("k", "v")
    decoder.feed(encode_publish("long/topic/name", b"a", v5=True, properties=u16(0x23, 5)))
    short = encode_publish("", b"payload", qos=2, packet_id=77, v5=True, properties=properties)
    packet = one(decoder, short)
    assert isinstance(packet, Publish)
    full = with_topic(packet, v5=True)
    assert full == encode_publish(
        "long/topic/name", b"payload", qos=2, packet_id=77, v5=True, properties=properties
    )
    again = one(client(5), full)
    assert again == Publish(
        raw=full,
        topic="long/topic/name",
        qos=2,
        retain=False,
        dup=False,
        packet_id=77,
        payload_size=7,
        topic_alias=5,
        topic_in_packet=True,
    )


def test_with_topic_v3_is_the_same_packet() -> None:
    data = encode_publish("a/b", b"x" * 300, qos=1, packet_id=1, retain=True, v5=False)
    packet = one(client(4), data)
    assert isinstance(packet, Publish)
    assert with_topic(packet, v5=False) == data


@pytest.mark.parametrize("level", [4, 5])
@pytest.mark.parametrize("ack", ACKS)
def test_acks(level: int, ack: PacketType) -> None:
    v5 = level == 5
    data = encode_ack(ack, 42, v5=v5)
    assert len(data) == 4
    for decoder in (client(level), server(level)):
        assert one(decoder, data) == Ack(raw=data, type=ack, packet_id=42, reason_code=0)
    if v5:
        with_code = encode_ack(ack, 42, 0x92, v5=True)
        assert one(client(5), with_code) == Ack(
            raw=with_code, type=ack, packet_id=42, reason_code=0x92
        )
        first = ack << 4 | (2 if ack == PacketType.PUBREL else 0)
        short = frame(first, b"\x00\x2a\x10")  # reason code, no property length
        assert one(client(5), short) == Ack(raw=short, type=ack, packet_id=42, reason_code=0x10)
        properties = text(0x1F, "nope") + pair("", "")
        props = frame(first, b"\x00\x2a\x80" + varint(len(properties)) + properties)
        assert one(server(5), props) == Ack(raw=props, type=ack, packet_id=42, reason_code=0x80)


@pytest.mark.parametrize("level", [4, 5])
def test_subscribe_and_suback(level: int) -> None:
    v5 = level == 5
    properties = varprop(0x0B, 17) + pair("who", "me") if v5 else b""
    filters = [("home/+/temp", 1), ("$share/g/x/#", 0b0010_1110 if v5 else 2), ("#", 0)]
    data = encode_subscribe(7, filters, v5=v5, properties=properties)
    assert one(client(level), data) == Subscribe(
        raw=data, packet_id=7, filters=tuple(filters), properties=properties
    )
    suback_properties = text(0x1F, "ok") if v5 else b""
    data = encode_suback(7, [1, 2, 0x80], v5=v5, properties=suback_properties)
    assert one(server(level), data) == Suback(
        raw=data, packet_id=7, reason_codes=(1, 2, 0x80), properties=suback_properties
    )


@pytest.mark.parametrize("level", [4, 5])
def test_unsubscribe_and_unsuback(level: int) -> None:
    v5 = level == 5
    properties = pair("a", "b") if v5 else b""
    data = encode_unsubscribe(8, ["a/#", "b"], v5=v5, properties=properties)
    assert one(client(level), data) == Unsubscribe(
        raw=data, packet_id=8, filters=("a/#", "b"), properties=properties
    )
    data = encode_unsuback(8, [0, 0x11] if v5 else (), v5=v5, properties=properties)
    assert one(server(level), data) == Other(raw=data, type=PacketType.UNSUBACK)


@pytest.mark.parametrize("level", [4, 5])
def test_pings(level: int) -> None:
    assert one(client(level), encode_pingreq()) == Other(raw=b"\xc0\x00", type=PacketType.PINGREQ)
    assert one(server(level), encode_pingresp()) == Other(raw=b"\xd0\x00", type=PacketType.PINGRESP)


def test_disconnect() -> None:
    assert one(client(4), encode_disconnect(v5=False)) == Disconnect(raw=b"\xe0\x00", reason_code=0)
    short = encode_disconnect(0x04, v5=True)
    assert one(client(5), short) == Disconnect(raw=short, reason_code=4)
    data = encode_disconnect(0x8E, v5=True, properties=text(0x1F, "taken over"))
    assert one(server(5), data) == Disconnect(raw=data, reason_code=0x8E)
    assert one(server(5), b"\xe0\x00") == Disconnect(raw=b"\xe0\x00", reason_code=0)


def test_auth() -> None:
    data = encode_auth(0x18, properties=text(0x15, "SCRAM-SHA-1") + text(0x16, b"\x00\x01"))
    assert one(client(5), data) == Other(raw=data, type=PacketType.AUTH)
    assert one(server(5), data) == Other(raw=data, type=PacketType.AUTH)
    assert one(server(5), encode_auth()) == Other(raw=b"\xf0\x00", type=PacketType.AUTH)


# --- decoding rules: each one raises MQTTDecodeError ---

CONNECT4 = encode_connect("c")
CONNECT5 = encode_connect("c", protocol_level=5)


def connect_body(name: str, level: int, flags: int, rest: bytes = b"\x00\x01c") -> bytes:
    props = b"\x00" if level == 5 else b""
    return frame(0x10, text(0, name)[1:] + bytes((level, flags)) + b"\x00\x3c" + props + rest)


# Each bad case with the reason code of the DISCONNECT a broker answers it with (None: a bare
# close), as Mosquitto 2.0.11 answers the same fault from an MQTT 5.0 client; the code does not
# depend on the version (3.x clients only ever get a bare close). Mosquitto itself lets PINGREQ
# flags and body, SUBACK, UNSUBACK and PINGRESP from a client and PUBACK leftovers through.
BAD_CLIENT: list[tuple[str, bytes, int | None]] = [
    ("remaining length of 5 bytes", CONNECT4 + b"\x30\xff\xff\xff\xff\x01", None),
    ("packet type 0", CONNECT4 + b"\x00\x00", PROTOCOL_ERROR),
    ("packet type 0 first", b"\x00\x00", None),
    ("PUBACK flags", CONNECT4 + b"\x41\x02\x00\x01", None),
    ("PUBREL flags 0", CONNECT4 + b"\x60\x02\x00\x01", None),
    (
        "SUBSCRIBE flags 0",
        CONNECT4
        + encode_subscribe(1, [("a", 0)], v5=False)[:1].replace(b"\x82", b"\x80")
        + encode_subscribe(1, [("a", 0)], v5=False)[1:],
        MALFORMED_PACKET,
    ),
    (
        "UNSUBSCRIBE flags 0",
        CONNECT4 + b"\xa0" + encode_unsubscribe(1, ["a"], v5=False)[1:],
        MALFORMED_PACKET,
    ),
    ("PINGREQ flags", CONNECT4 + b"\xc1\x00", MALFORMED_PACKET),
    ("DISCONNECT flags", CONNECT4 + b"\xe2\x00", None),
    ("CONNECT flags", b"\x12" + CONNECT4[1:], None),
    ("PUBLISH QoS 3", CONNECT4 + frame(0x36, b"\x00\x01t\x00\x01"), MALFORMED_PACKET),
    ("not CONNECT first", encode_pingreq(), None),
    ("PUBLISH first", encode_publish("t", b"", v5=False), None),
    ("CONNECT twice", CONNECT4 + CONNECT4, None),
    ("CONNACK from client", CONNECT4 + encode_connack(v5=False), None),
    ("SUBACK from client", CONNECT4 + encode_suback(1, [0], v5=False), None),
    ("UNSUBACK from client", CONNECT4 + encode_unsuback(1, v5=False), None),
    ("PINGRESP from client", CONNECT4 + encode_pingresp(), None),
    ("AUTH in v3.1.1", CONNECT4 + encode_auth(), None),
    ("protocol MQTT level 3", connect_body("MQTT", 3, 2), None),
    ("protocol MQIsdp level 4", connect_body("MQIsdp", 4, 2), None),
    ("protocol level 6", connect_body("MQTT", 6, 2), None),
    ("protocol name", connect_body("MQTX", 4, 2), None),
    ("CONNECT reserved flag", connect_body("MQTT", 4, 3), None),
    ("will QoS without will", connect_body("MQTT", 4, 0b0000_1010), None),
    ("will retain without will", connect_body("MQTT", 4, 0b0010_0010), None),
    ("will QoS 3", connect_body("MQTT", 4, 0b0001_1110, b"\x00\x01c\x00\x01t\x00\x00"), None),
    ("password without user v4", connect_body("MQTT", 4, 0b0100_0010, b"\x00\x01c\x00\x01p"), None),
    ("CONNECT trailing byte", connect_body("MQTT", 4, 2, b"\x00\x01c\x00"), None),
    ("CONNECT client id past end", connect_body("MQTT", 4, 2, b"\x00\x05c"), None),
    ("client id invalid UTF-8", connect_body("MQTT", 4, 2, b"\x00\x02\xc3\x28"), None),
    ("client id surrogate", connect_body("MQTT", 4, 2, b"\x00\x03\xed\xa0\x80"), None),
    ("client id U+0000", connect_body("MQTT", 4, 2, b"\x00\x02a\x00"), None),
    (
        "will topic wildcard",
        connect_body("MQTT", 4, 0b0000_0110, b"\x00\x01c\x00\x01#\x00\x00"),
        None,
    ),
    ("PUBLISH topic +", CONNECT4 + encode_publish("a/+/b", b"", v5=False), PROTOCOL_ERROR),
    ("PUBLISH topic #", CONNECT4 + encode_publish("a/#", b"", v5=False), PROTOCOL_ERROR),
    ("PUBLISH topic U+0000", CONNECT4 + encode_publish("a\x00", b"", v5=False), MALFORMED_PACKET),
    ("PUBLISH topic bad UTF-8", CONNECT4 + frame(0x30, b"\x00\x01\xff"), MALFORMED_PACKET),
    ("PUBLISH topic empty v3", CONNECT4 + encode_publish("", b"x", v5=False), PROTOCOL_ERROR),
    ("PUBLISH topic empty v5", CONNECT5 + encode_publish("", b"x", v5=True), PROTOCOL_ERROR),
    ("PUBLISH topic past end", CONNECT4 + frame(0x30, b"\x00\x09abc"), MALFORMED_PACKET),
    ("PUBLISH without packet id", CONNECT4 + frame(0x32, b"\x00\x01t\x00"), MALFORMED_PACKET),
    ("PUBLISH packet id 0", CONNECT4 + frame(0x32, b"\x00\x01t\x00\x00"), PROTOCOL_ERROR),
    ("PUBLISH v5 without properties", CONNECT5 + frame(0x30, b"\x00\x01t"), MALFORMED_PACKET),
    (
        "PUBLISH unknown property",
        CONNECT5 + encode_publish("t", b"", v5=True, properties=u8(0x04, 0)),
        MALFORMED_PACKET,
    ),
    (
        "PUBLISH property past end",
        CONNECT5 + frame(0x30, b"\x00\x01t\x05\x02\x00\x00"),
        MALFORMED_PACKET,
    ),
    (
        "PUBLISH property over length",
        CONNECT5 + frame(0x30, b"\x00\x01t\x02\x02\x00\x00\x00\x00"),
        MALFORMED_PACKET,
    ),
    (
        "PUBLISH topic alias 0",
        CONNECT5 + encode_publish("t", b"", v5=True, properties=u16(0x23, 0)),
        MALFORMED_PACKET,
    ),
    (
        "PUBLISH topic alias twice",
        CONNECT5 + encode_publish("t", b"", v5=True, properties=u16(0x23, 1) + u16(0x23, 2)),
        None,
    ),
    (
        "PUBLISH unknown alias",
        CONNECT5 + encode_publish("", b"", v5=True, properties=u16(0x23, 9)),
        PROTOCOL_ERROR,
    ),
    (
        "PUBLISH property bad UTF-8",
        CONNECT5 + encode_publish("t", b"", v5=True, properties=text(0x03, b"\xff")),
        MALFORMED_PACKET,
    ),
    (
        "PUBLISH user property value past end",
        CONNECT5 + frame(0x30, b"\x00\x01t\x05\x26\x00\x01k\x00"),
        MALFORMED_PACKET,
    ),
    ("SUBSCRIBE without filters", CONNECT4 + frame(0x82, b"\x00\x01"), MALFORMED_PACKET),
    ("SUBSCRIBE v5 without filters", CONNECT5 + frame(0x82, b"\x00\x01\x00"), MALFORMED_PACKET),
    (
        "SUBSCRIBE v3 options 3",
        CONNECT4 + encode_subscribe(1, [("a", 3)], v5=False),
        MALFORMED_PACKET,
    ),
    (
        "SUBSCRIBE v3 options 4",
        CONNECT4 + encode_subscribe(1, [("a", 4)], v5=False),
        MALFORMED_PACKET,
    ),
    (
        "SUBSCRIBE v5 reserved option bits",
        CONNECT5 + encode_subscribe(1, [("a", 0x40)], v5=True),
        MALFORMED_PACKET,
    ),
    ("SUBSCRIBE v5 QoS 3", CONNECT5 + encode_subscribe(1, [("a", 3)], v5=True), MALFORMED_PACKET),
    (
        "SUBSCRIBE v5 retain handling 3",
        CONNECT5 + encode_subscribe(1, [("a", 0x30)], v5=True),
        MALFORMED_PACKET,
    ),
    (
        "SUBSCRIBE filter without options",
        CONNECT4 + frame(0x82, b"\x00\x01\x00\x01a"),
        MALFORMED_PACKET,
    ),
    (
        "SUBSCRIBE empty filter",
        CONNECT4 + encode_subscribe(1, [("", 0)], v5=False),
        MALFORMED_PACKET,
    ),
    (
        "SUBSCRIBE # not last",
        CONNECT4 + encode_subscribe(1, [("a/#/b", 0)], v5=False),
        MALFORMED_PACKET,
    ),
    (
        "SUBSCRIBE + inside a level",
        CONNECT4 + encode_subscribe(1, [("a+/b", 0)], v5=False),
        MALFORMED_PACKET,
    ),
    ("SUBSCRIBE packet id 0", CONNECT4 + frame(0x82, b"\x00\x00\x00\x01a\x00"), MALFORMED_PACKET),
    ("UNSUBSCRIBE without filters", CONNECT4 + frame(0xA2, b"\x00\x01"), MALFORMED_PACKET),
    ("PUBACK v3 with reason code", CONNECT4 + frame(0x40, b"\x00\x01\x00"), None),
    ("PUBACK too short", CONNECT4 + frame(0x40, b"\x00"), None),
    ("PUBACK v5 leftover after properties", CONNECT5 + frame(0x40, b"\x00\x01\x00\x00\x00"), None),
    ("PINGREQ with a body", CONNECT4 + frame(0xC0, b"\x00"), MALFORMED_PACKET),
    ("DISCONNECT v3 with a body", CONNECT4 + frame(0xE0, b"\x00"), None),
    ("AUTH v5 with reason code only", CONNECT5 + frame(0xF0, b"\x18"), None),
]

BAD_SERVER: list[tuple[str, int | None, bytes]] = [
    ("CONNECT from server", 4, CONNECT4),
    ("SUBSCRIBE from server", 4, encode_subscribe(1, [("a", 0)], v5=False)),
    ("UNSUBSCRIBE from server", 4, encode_unsubscribe(1, ["a"], v5=False)),
    ("PINGREQ from server", 4, encode_pingreq()),
    ("DISCONNECT from server v3", 4, encode_disconnect(v5=False)),
    ("DISCONNECT from server unknown", None, encode_disconnect(v5=False)),
    ("AUTH from server v3", 4, encode_auth()),
    ("CONNACK flags", 4, b"\x21\x02\x00\x00"),
    ("CONNACK reserved acknowledge flags", 4, b"\x20\x02\x02\x00"),
    ("CONNACK too long v3", 4, b"\x20\x03\x00\x00\x00"),
    ("CONNACK too short", 4, b"\x20\x01\x00"),
    ("SUBACK flags", 4, b"\x92\x03\x00\x01\x00"),
    ("SUBACK without codes", 4, frame(0x90, b"\x00\x01")),
    ("SUBACK v5 properties past end", 5, frame(0x90, b"\x00\x01\x05\x00")),
    ("UNSUBACK v3 with codes", 4, frame(0xB0, b"\x00\x01\x00")),
    ("UNSUBACK v5 without codes", 5, frame(0xB0, b"\x00\x01\x00")),
    ("PINGRESP with body", 4, frame(0xD0, b"\x00")),
    ("type 0", None, b"\x00\x00"),
]


@pytest.mark.parametrize(
    ("data", "code"), [case[1:] for case in BAD_CLIENT], ids=[c[0] for c in BAD_CLIENT]
)
def test_bad_client_bytes(data: bytes, code: int | None) -> None:
    decoder = MQTTDecoder(from_client=True)
    with pytest.raises(MQTTDecodeError) as info:
        decoder.feed(data)
    assert isinstance(info.value, DecodeError)
    assert str(info.value)
    assert info.value.code == code
    # the rule holds however the bytes arrive
    with pytest.raises(MQTTDecodeError) as info:
        bytewise = MQTTDecoder(from_client=True)
        for i in range(len(data)):
            bytewise.feed(data[i : i + 1])
    assert info.value.code == code


@pytest.mark.parametrize(
    ("level", "data"), [case[1:] for case in BAD_SERVER], ids=[c[0] for c in BAD_SERVER]
)
def test_bad_server_bytes(level: int | None, data: bytes) -> None:
    with pytest.raises(MQTTDecodeError):
        server(level).feed(data)


def test_oversized_packet_is_refused_once_its_length_is_known() -> None:
    decoder = MQTTDecoder(from_client=True, max_packet_size=100)
    decoder.feed(CONNECT4)
    assert decoder.feed(b"\x30") == []
    with pytest.raises(MQTTDecodeError, match="maximum packet size"):
        decoder.feed(b"\x80\x08")  # 1024 bytes announced, none sent
    exact = encode_publish("t", b"x" * 95, v5=False)
    assert len(exact) == 100
    assert isinstance(one(client(4, max_packet_size=100), exact), Publish)
    with pytest.raises(MQTTDecodeError) as info:
        client(4, max_packet_size=99).feed(exact[:2])
    assert info.value.code == PACKET_TOO_LARGE


def test_non_minimal_remaining_length_is_allowed() -> None:
    data = b"\xc0\x80\x80\x80\x00"
    assert one(client(), data) == Other(raw=data, type=PacketType.PINGREQ)


def test_largest_remaining_length_is_announced_but_not_buffered() -> None:
    decoder = client()
    assert decoder.feed(b"\x30\xff\xff\xff\x7f") == []  # 268,435,455: allowed by default


def test_errors_are_final_and_keep_the_packets_before() -> None:
    decoder = MQTTDecoder(from_client=True)
    with pytest.raises(MQTTDecodeError) as info:
        decoder.feed(CONNECT4 + encode_pingreq() + b"\x00\x00" + encode_pingreq())
    assert [p.raw for p in info.value.packets] == [CONNECT4, encode_pingreq()]
    assert info.value.code == PROTOCOL_ERROR
    for data in (b"", encode_pingreq()):
        with pytest.raises(MQTTDecodeError, match="earlier error") as info:
            decoder.feed(data)
        assert info.value.code is None  # the first error was the one to answer


def publish5(topic: str | bytes, *, qos: int = 0, packet_id: int = 1, properties: bytes) -> bytes:
    name = topic.encode() if isinstance(topic, str) else topic
    head = len(name).to_bytes(2, "big") + name + (packet_id.to_bytes(2, "big") if qos else b"")
    return frame(0x30 | qos << 1, head + varint(len(properties)) + properties + b"p")


def connacked(topic_alias_maximum: int = 0, maximum_packet_size: int | None = None) -> MQTTDecoder:
    """A v5 client-direction decoder that has applied a CONNACK with these limits."""
    decoder = client(5)
    decoder.apply_connack(
        Connack(
            raw=b"",
            session_present=False,
            reason_code=0,
            topic_alias_maximum=topic_alias_maximum,
            maximum_packet_size=maximum_packet_size,
        )
    )
    return decoder


def test_aliases_above_the_connack_maximum_are_invalid() -> None:
    decoder = client(5)
    assert decoder.connack is None
    assert one(decoder, publish5("a", properties=u16(0x23, 500))).topic == "a"  # not known yet
    connack = one(server(5), encode_connack(v5=True, properties=u16(0x22, 10)))
    assert isinstance(connack, Connack)
    decoder = client(5)
    decoder.apply_connack(connack)
    assert decoder.connack is connack
    assert one(decoder, publish5("a", properties=u16(0x23, 10))).topic == "a"
    for topic in ("b", ""):
        with pytest.raises(MQTTDecodeError, match="Topic Alias Maximum 10") as info:
            connacked(topic_alias_maximum=10).feed(publish5(topic, properties=u16(0x23, 11)))
        assert info.value.code == TOPIC_ALIAS_INVALID
    with pytest.raises(MQTTDecodeError) as info:
        connacked(topic_alias_maximum=10).feed(publish5("a", properties=u16(0x23, 0)))
    assert info.value.code == MALFORMED_PACKET


def test_a_connack_without_topic_alias_maximum_allows_no_alias() -> None:
    connack = one(server(5), encode_connack(v5=True))
    assert isinstance(connack, Connack)
    assert (connack.topic_alias_maximum, connack.maximum_packet_size) == (0, None)
    decoder = client(5)
    decoder.apply_connack(connack)
    with pytest.raises(MQTTDecodeError) as info:
        decoder.feed(publish5("a", properties=u16(0x23, 1)))
    assert info.value.code == TOPIC_ALIAS_INVALID


def test_connack_limits_are_for_the_client_direction_only() -> None:
    with pytest.raises(ValueError):
        server(5).apply_connack(Connack(raw=b"", session_present=False, reason_code=0))


def test_the_connack_maximum_packet_size_counts_as_mosquitto_does() -> None:
    # Mosquitto refuses when the remaining length + 1 exceeds its max_packet_size.
    taken = frame(0x30, text(0, "t")[1:] + b"\x00" + b"x" * 995)  # remaining length 999
    assert len(taken) == 1002
    assert one(connacked(maximum_packet_size=1000), taken) == one(client(5), taken)
    refused = frame(0x30, text(0, "t")[1:] + b"\x00" + b"x" * 996)  # remaining length 1000
    decoder = connacked(maximum_packet_size=1000)
    with pytest.raises(MQTTDecodeError, match="Maximum Packet Size 1000") as info:
        decoder.feed(refused[:3])  # refused as soon as the length is known
    assert info.value.code == PACKET_TOO_LARGE


def test_a_connack_maximum_packet_size_of_0_is_an_error() -> None:
    with pytest.raises(MQTTDecodeError, match="maximum packet size is 0"):
        server(5).feed(encode_connack(v5=True, properties=u32(0x27, 0)))


@pytest.mark.parametrize(
    ("properties", "topic", "packet_id", "code"),
    [
        (u16(0x23, 11), "a/+", 1, TOPIC_ALIAS_INVALID),  # alias before wildcard
        (u16(0x23, 0), "a/+", 1, MALFORMED_PACKET),
        (u16(0x23, 11), b"a\xff", 1, MALFORMED_PACKET),  # encoding before alias
        (u16(0x23, 11), b"a\xff", 0, MALFORMED_PACKET),  # encoding before packet id
        (u16(0x23, 11), "a/b", 0, PROTOCOL_ERROR),  # packet id before alias
        (u8(0x04, 0), "a/b", 0, PROTOCOL_ERROR),  # packet id before properties
        (u8(0x04, 0), "a/+", 1, MALFORMED_PACKET),  # properties before wildcard
        (u8(0x04, 0), "", 1, MALFORMED_PACKET),  # properties before the unknown alias
        (u8(0x01, 0) * 2, "a/+", 1, None),  # a repeated property: Mosquitto just closes
        (u8(0x01, 0) * 2, b"\xff", 1, MALFORMED_PACKET),
    ],
)
def test_a_publish_with_two_faults_gets_mosquittos_code(
    properties: bytes, topic: str | bytes, packet_id: int, code: int | None
) -> None:
    data = publish5(topic, qos=1, packet_id=packet_id, properties=properties)
    with pytest.raises(MQTTDecodeError) as info:
        connacked(topic_alias_maximum=10).feed(data)
    assert info.value.code == code


def test_partial_packets_wait_for_more() -> None:
    decoder = client()
    data = encode_publish("t", b"p" * 1000, v5=False)
    assert decoder.feed(data[:1]) == []
    assert decoder.feed(data[1:2]) == []
    assert decoder.feed(data[2:500]) == []
    [packet] = decoder.feed(data[500:] + data[:3])
    assert packet.raw == data
    [packet] = decoder.feed(data[3:])
    assert packet.raw == data
    assert decoder.feed(b"") == []


# --- encoders ---


def test_encoders_refuse_what_mqtt_cannot_carry() -> None:
    with pytest.raises(ValueError):
        encode_ack(PacketType.PUBLISH, 1, v5=False)
    with pytest.raises(ValueError):
        encode_ack(PacketType.PUBACK, 0, v5=False)
    with pytest.raises(ValueError):
        encode_ack(PacketType.PUBACK, 1, 0x80, v5=False)
    with pytest.raises(ValueError):
        encode_publish("t", b"", qos=1, v5=False)
    with pytest.raises(ValueError):
        encode_publish("t", b"", packet_id=3, v5=False)
    with pytest.raises(ValueError):
        encode_subscribe(1, [], v5=False)
    with pytest.raises(ValueError):
        encode_suback(1, [0], v5=False, properties=b"\x1f\x00\x00")
    with pytest.raises(ValueError):
        encode_connect("c", protocol_level=6)


def test_pubrel_has_its_flags() -> None:
    assert encode_ack(PacketType.PUBREL, 1, v5=False) == b"\x62\x02\x00\x01"
    assert encode_ack(PacketType.PUBACK, 258, 0x10, v5=True) == b"\x40\x04\x01\x02\x10\x00"


# --- hypothesis: generated valid streams, arbitrary and mutated bytes ---

names = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00+#"), max_size=8)
topics = st.lists(names, min_size=1, max_size=3).map("/".join).filter(bool)
topic_filters = st.one_of(
    topics,
    st.lists(st.one_of(names, st.just("+")), min_size=1, max_size=3).map("/".join).filter(bool),
    topics.map(lambda t: t + "/#"),
    st.just("#"),
)
payloads = st.binary(max_size=40)
packet_ids = st.integers(1, 0xFFFF)
codes = st.integers(0, 255)


@st.composite
def properties(draw: st.DrawFn, *, publish: bool = False) -> bytes:
    makers = [
        st.builds(pair, names, names),
        st.builds(text, st.just(0x1F), names),
        st.builds(u32, st.just(0x02), st.integers(0, 2**32 - 1)),
        st.builds(text, st.just(0x03), names),
        st.builds(text, st.just(0x09), st.binary(max_size=6)),
        st.builds(u8, st.just(0x01), st.integers(0, 1)),
    ]
    chosen = draw(st.lists(st.sampled_from(range(len(makers))), max_size=4, unique=True))
    out = b"".join(draw(makers[i]) for i in chosen)
    if publish and draw(st.booleans()):
        out += varprop(0x0B, draw(st.integers(1, 268_435_455)))
    return out


@st.composite
def publishes(draw: st.DrawFn, v5: bool, aliases: set[int]) -> bytes:
    qos = draw(st.integers(0, 2))
    packet_id = draw(packet_ids) if qos else None
    topic = draw(topics)
    props = draw(properties()) if v5 else b""
    if v5 and draw(st.booleans()):
        alias = draw(st.integers(1, 2))
        if alias in aliases and draw(st.booleans()):
            topic = ""
        aliases.add(alias)
        props += u16(0x23, alias)
    return encode_publish(
        topic,
        draw(payloads),
        qos=qos,
        retain=draw(st.booleans()),
        dup=draw(st.booleans()),
        packet_id=packet_id,
        v5=v5,
        properties=props,
    )


@st.composite
def streams(draw: st.DrawFn, from_client: bool) -> tuple[int, bytes]:
    level = draw(st.sampled_from([3, 4, 5]))
    v5 = level == 5
    aliases: set[int] = set()
    parts: list[bytes] = []
    if from_client:
        will = draw(st.none() | topics)
        username = draw(st.none() | names)
        password = draw(st.none() | st.binary(max_size=8))
        if username is None and level != 5:
            password = None  # a password needs a user name before 5.0
        parts.append(
            encode_connect(
                draw(names),
                protocol_level=level,
                username=username,
                password=password,
                clean_start=draw(st.booleans()),
                keep_alive=draw(st.integers(0, 0xFFFF)),
                will_topic=will,
                will_payload=draw(payloads) if will else b"",
                will_qos=draw(st.integers(0, 2)) if will else 0,
                will_retain=draw(st.booleans()) if will else False,
            )
        )
    options = (
        st.integers(0, 2)
        if not v5
        else st.integers(0, 0x2E).filter(lambda o: o & 3 != 3 and o & 0x30 != 0x30)
    )
    others: list[st.SearchStrategy[bytes]] = [
        st.builds(
            lambda t, i, c: encode_ack(t, i, c if v5 else 0, v5=v5),
            st.sampled_from(ACKS),
            packet_ids,
            codes,
        ),
    ]
    if from_client:
        others += [
            st.builds(
                lambda i, f, p: encode_subscribe(i, f, v5=v5, properties=p),
                packet_ids,
                st.lists(st.tuples(topic_filters, options), min_size=1, max_size=3),
                properties() if v5 else st.just(b""),
            ),
            st.builds(
                lambda i, f, p: encode_unsubscribe(i, f, v5=v5, properties=p),
                packet_ids,
                st.lists(topic_filters, min_size=1, max_size=3),
                properties() if v5 else st.just(b""),
            ),
            st.just(encode_pingreq()),
            st.just(encode_disconnect(v5=False)),
        ]
    else:
        others += [
            st.builds(
                lambda s, c, p: encode_connack(s, c, v5=v5, properties=p),
                st.booleans(),
                codes,
                properties() if v5 else st.just(b""),
            ),
            st.builds(
                lambda i, c, p: encode_suback(i, c, v5=v5, properties=p),
                packet_ids,
                st.lists(codes, min_size=1, max_size=3),
                properties() if v5 else st.just(b""),
            ),
            st.builds(
                lambda i, c, p: encode_unsuback(i, c if v5 else (), v5=v5, properties=p),
                packet_ids,
                st.lists(codes, min_size=1, max_size=3),
                properties() if v5 else st.just(b""),
            ),
            st.just(encode_pingresp()),
        ]
    if v5:
        others += [
            st.builds(
                lambda c, p: encode_disconnect(c, v5=True, properties=p), codes, properties()
            ),
            st.builds(lambda c, p: encode_auth(c, properties=p), codes, properties()),
        ]
    # Draw one packet at a time so that alias-only publishes follow their definition.
    for _ in range(draw(st.integers(0, 6))):
        parts.append(draw(publishes(v5, aliases) if draw(st.booleans()) else st.one_of(*others)))
    return level, b"".join(parts)


def decoder_for(from_client: bool, level: int) -> MQTTDecoder:
    return MQTTDecoder(from_client=from_client, protocol_level=None if from_client else level)


def feed_all(decoder: MQTTDecoder, chunks: Sequence[bytes]) -> list[Packet]:
    return [packet for chunk in chunks for packet in decoder.feed(chunk)]


@FAST
@given(st.booleans(), st.sampled_from([None, 3, 4, 5]), st.binary(max_size=200), st.data())
def test_arbitrary_bytes_raise_only_decode_errors(
    from_client: bool, level: int | None, data: bytes, chunking: st.DataObject
) -> None:
    cuts = sorted(chunking.draw(st.lists(st.integers(0, len(data)), max_size=4)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    decoder = MQTTDecoder(from_client=from_client, protocol_level=level)
    with contextlib.suppress(MQTTDecodeError):
        feed_all(decoder, chunks)


@FAST
@given(st.booleans(), st.binary(max_size=120))
def test_arbitrary_bytes_after_connect_raise_only_decode_errors(v5: bool, data: bytes) -> None:
    decoder = client(5 if v5 else 4)
    try:
        decoder.feed(data)
    except MQTTDecodeError as exc:
        assert exc.code in (None, MALFORMED_PACKET, PROTOCOL_ERROR, PACKET_TOO_LARGE)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans().flatmap(lambda c: st.tuples(st.just(c), streams(c))), st.data())
def test_valid_streams_decode_the_same_however_split(
    case: tuple[bool, tuple[int, bytes]], chunking: st.DataObject
) -> None:
    from_client, (level, data) = case
    whole = decoder_for(from_client, level).feed(data)
    assert b"".join(p.raw for p in whole) == data
    for i in range(len(data) + 1):
        assert feed_all(decoder_for(from_client, level), [data[:i], data[i:]]) == whole
    assert feed_all(decoder_for(from_client, level), [bytes((b,)) for b in data]) == whole
    cuts = sorted(chunking.draw(st.lists(st.integers(0, len(data)), max_size=8)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    assert feed_all(decoder_for(from_client, level), chunks) == whole


@FAST
@given(
    st.booleans().flatmap(lambda c: st.tuples(st.just(c), streams(c))),
    st.lists(
        st.tuples(st.sampled_from(["flip", "insert", "delete"]), st.integers(0), codes),
        min_size=1,
        max_size=3,
    ),
)
def test_mutated_streams_raise_only_decode_errors(
    case: tuple[bool, tuple[int, bytes]], mutations: list[tuple[str, int, int]]
) -> None:
    from_client, (level, data) = case
    mutated = bytearray(data)
    for kind, where, value in mutations:
        i = where % (len(mutated) + 1)
        if kind == "insert":
            mutated.insert(i, value)
        elif i < len(mutated):
            if kind == "flip":
                mutated[i] ^= value or 1
            else:
                del mutated[i]
    for chunk_size in (len(mutated) or 1, 7):
        chunks = [bytes(mutated[i : i + chunk_size]) for i in range(0, len(mutated), chunk_size)]
        try:
            packets = feed_all(decoder_for(from_client, level), chunks)
        except MQTTDecodeError:
            continue
        assert (
            b"".join(p.raw for p in packets) == bytes(mutated)[: sum(len(p.raw) for p in packets)]
        )


@FAST
@given(st.booleans(), topics, payloads, st.integers(0, 2), packet_ids, st.booleans())
def test_publish_round_trips(
    v5: bool, topic: str, payload: bytes, qos: int, packet_id: int, retain: bool
) -> None:
    data = encode_publish(
        topic, payload, qos=qos, retain=retain, packet_id=packet_id if qos else None, v5=v5
    )
    packet = one(client(5 if v5 else 4), data)
    assert isinstance(packet, Publish)
    assert (packet.topic, packet.qos, packet.retain, packet.payload_size) == (
        topic,
        qos,
        retain,
        len(payload),
    )
    assert packet.packet_id == (packet_id if qos else None)
    assert with_topic(packet, v5=v5) == data


@FAST
@given(st.booleans(), packet_ids, st.lists(st.tuples(topic_filters, st.integers(0, 2)), min_size=1))
def test_subscribe_and_suback_round_trip(
    v5: bool, packet_id: int, filters: list[tuple[str, int]]
) -> None:
    data = encode_subscribe(packet_id, filters, v5=v5)
    packet = one(client(5 if v5 else 4), data)
    assert packet == Subscribe(
        raw=data, packet_id=packet_id, filters=tuple(filters), properties=b""
    )
    codes_back = [qos for _, qos in filters]
    data = encode_suback(packet_id, codes_back, v5=v5)
    assert one(server(5 if v5 else 4), data) == Suback(
        raw=data, packet_id=packet_id, reason_codes=tuple(codes_back), properties=b""
    )
