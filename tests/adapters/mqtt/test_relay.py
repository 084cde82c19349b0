"""The relay's decisions as scripted conversations: bytes in, bytes, events and signals out.

Each case is a :func:`play` of steps, as mitmproxy's Playbook scripts a layer: what one side
sends, and everything the relay must answer to that, in full (whatever a step does not name
must be empty). The packets are made with the codec's encoders; there is no socket. The same
decisions against a real Mosquitto are in ``test_proxy_integration.py``.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field

import pytest

from commgraph.adapters.mqtt.codec import (
    PROTOCOL_ERROR,
    PacketType,
    encode_ack,
    encode_connack,
    encode_connect,
    encode_disconnect,
    encode_pingreq,
    encode_pingresp,
    encode_publish,
    encode_suback,
    encode_subscribe,
)
from commgraph.adapters.mqtt.relay import (
    ClientIdentity,
    Close,
    Observed,
    Relay,
    RelayStats,
)
from commgraph.detectors.guardrails import Signal

T = 1_700_000_000.0
PEER = "10.0.0.7:50123"
NOT_AUTHORIZED = 0x87


def u16(prop: int, value: int) -> bytes:
    return bytes((prop,)) + struct.pack("!H", value)


@dataclass
class Site:
    """The relay's two callables as plain functions: who may connect, and what is blocked."""

    blocked: set[tuple[str, str, str]] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)  # client ids whose CONNECT is refused
    clients: list[ClientIdentity] = field(default_factory=list)

    def verdict(self, ts: float, src: str, dst: str, relation: str, size: int | None) -> bool:
        assert ts == T
        return (src, dst, relation) in self.blocked

    def identify(self, client: ClientIdentity, ts: float) -> str | None:
        self.clients.append(client)
        return None if client.client_id in self.refused else f"svc:{client.client_id}"

    def relay(self, *, cert_cn: str | None = None) -> Relay:
        return Relay(self.verdict, self.identify, peer=PEER, cert_cn=cert_cn, stats=RelayStats())


@dataclass
class Step:
    """One read from ``sender`` and the relay's whole answer to it."""

    sender: str  # "client" or "broker"
    data: bytes
    to_client: bytes = b""
    to_broker: bytes = b""
    events: list[Observed] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)
    close: bool | None = None  # None: no close; True: abort; False: close after flushing


def client(data: bytes, **expected: object) -> Step:
    return Step("client", data, **expected)  # type: ignore[arg-type]


def broker(data: bytes, **expected: object) -> Step:
    return Step("broker", data, **expected)  # type: ignore[arg-type]


def play(relay: Relay, *steps: Step) -> list[Close]:
    """Feed the steps in order and compare each answer in full; returns the closes seen."""
    closes = []
    for number, step in enumerate(steps, 1):
        if step.sender == "client":
            out = relay.client_data(step.data, T)
        else:
            out = relay.broker_data(step.data, T)
        got = Step(
            step.sender,
            step.data,
            b"".join(out.to_client),
            b"".join(out.to_broker),
            out.events,
            out.signals,
            None if out.close is None else out.close.abort,
        )
        assert got == step, f"step {number} ({step.sender})"
        if out.close is not None:
            closes.append(out.close)
    return closes


def connected(site: Site, client_id: str = "thermo-1", *, v5: bool) -> Relay:
    """A relay whose client has connected and had the broker's CONNACK."""
    relay = site.relay()
    connect = encode_connect(client_id, protocol_level=5 if v5 else 4)
    connack = encode_connack(v5=v5, properties=u16(0x22, 10) if v5 else b"")
    play(relay, client(connect, to_broker=connect), broker(connack, to_client=connack))
    return relay


@pytest.mark.parametrize("v5", [False, True])
def test_connect_names_the_client_and_both_directions_pass_through(v5: bool) -> None:
    site = Site()
    relay = site.relay(cert_cn="thermo.site")
    connect = encode_connect("thermo-1", protocol_level=5 if v5 else 4, username="heating")
    connack = encode_connack(v5=v5)
    ping, pong = encode_pingreq(), encode_pingresp()
    play(
        relay,
        client(connect[:4]),  # a CONNECT in two reads
        client(connect[4:], to_broker=connect),
        broker(connack, to_client=connack),
        client(ping, to_broker=ping),
        broker(pong, to_client=pong),
    )
    assert site.clients == [ClientIdentity("thermo-1", "heating", "thermo.site", PEER)]
    assert relay.address == "svc:thermo-1" and relay.v5 is v5
    assert relay.broker_decoder.protocol_level == (5 if v5 else 4)
    assert relay.client_decoder.connack is not None  # its limits hold for the client
    assert relay.stats.packets == 4


def test_a_will_is_a_publish_of_the_client() -> None:
    site = Site()
    relay = site.relay()
    connect = encode_connect("lock-7", will_topic="locks/7/status", will_payload=b"gone")
    play(
        relay,
        client(
            connect,
            to_broker=connect,
            events=[("svc:lock-7", "locks/7/status", "publish", None, False)],
        ),
    )


@pytest.mark.parametrize("v5", [False, True])
def test_allowed_publishes_are_forwarded_as_they_came(v5: bool) -> None:
    site = Site()
    relay = connected(site, v5=v5)
    one = encode_publish("home/kitchen/temp", b"21.5", v5=v5)
    two = encode_publish("home/hall/temp", b"19", qos=1, packet_id=3, v5=v5)
    puback = encode_ack(PacketType.PUBACK, 3, v5=v5)
    play(
        relay,
        client(
            one + two,  # one read, two packets: one write
            to_broker=one + two,
            events=[
                ("svc:thermo-1", "home/kitchen/temp", "publish", 4, False),
                ("svc:thermo-1", "home/hall/temp", "publish", 2, False),
            ],
            signals=[Signal.ACTIVE],  # the first PUBLISH only
        ),
        broker(puback, to_client=puback),
        client(
            one,
            to_broker=one,
            events=[("svc:thermo-1", "home/kitchen/temp", "publish", 4, False)],
        ),
    )


@pytest.mark.parametrize("v5", [False, True])
def test_a_blocked_publish_is_answered_by_the_relay_at_each_qos(v5: bool) -> None:
    site = Site(blocked={("svc:thermo-1", "locks/all", "publish")})
    relay = connected(site, v5=v5)
    reason = NOT_AUTHORIZED if v5 else 0  # 3.1.1 has no reason: a plain ack, as Mosquitto
    event = ("svc:thermo-1", "locks/all", "publish", 4, True)
    play(
        relay,
        client(
            encode_publish("locks/all", b"open", v5=v5), events=[event], signals=[Signal.ACTIVE]
        ),
        client(
            encode_publish("locks/all", b"open", qos=1, packet_id=5, v5=v5),
            to_client=encode_ack(PacketType.PUBACK, 5, reason, v5=v5),
            events=[event],
        ),
        client(
            encode_publish("locks/all", b"open", qos=2, packet_id=6, v5=v5),
            to_client=encode_ack(PacketType.PUBREC, 6, reason, v5=v5),
            events=[event],
        ),
        # the broker never heard of packet id 6: the relay completes the flow itself
        client(
            encode_ack(PacketType.PUBREL, 6, v5=v5),
            to_client=encode_ack(PacketType.PUBCOMP, 6, v5=v5),
        ),
        # a PUBREL of a flow the broker knows goes to the broker
        client(
            encode_ack(PacketType.PUBREL, 6, v5=v5),
            to_broker=encode_ack(PacketType.PUBREL, 6, v5=v5),
        ),
    )


@pytest.mark.parametrize("v5", [False, True])
def test_suback_merges_the_broker_codes_with_the_refused_filters(v5: bool) -> None:
    site = Site(blocked={("svc:thermo-1", "locks/#", "subscribe")})
    relay = connected(site, v5=v5)
    failure = NOT_AUTHORIZED if v5 else 0x80
    filters = [("home/+/temp", 1), ("locks/#", 0), ("home/hall/set", 2)]
    asked = [
        ("svc:thermo-1", "home/+/temp", "subscribe", None, False),
        ("svc:thermo-1", "locks/#", "subscribe", None, True),
        ("svc:thermo-1", "home/hall/set", "subscribe", None, False),
    ]
    play(
        relay,
        client(
            encode_subscribe(9, filters, v5=v5),
            to_broker=encode_subscribe(9, [filters[0], filters[2]], v5=v5),
            events=asked,
            signals=[Signal.ACTIVE],
        ),
        broker(encode_suback(9, [1, 2], v5=v5), to_client=encode_suback(9, [1, failure, 2], v5=v5)),
        # every filter refused: the relay answers alone
        client(
            encode_subscribe(10, [("locks/#", 0)], v5=v5),
            to_client=encode_suback(10, [failure], v5=v5),
            events=[asked[1]],
        ),
        # a SUBACK the relay has no plan for passes as it is
        broker(encode_suback(11, [0], v5=v5), to_client=encode_suback(11, [0], v5=v5)),
    )
    assert relay.suback_plan == {}


def test_a_lost_alias_gets_its_topic_written_back_in() -> None:
    site = Site(
        blocked={
            ("svc:thermo-1", "home/secret", "publish"),
            ("home/cmd", "svc:thermo-1", "deliver"),
        }
    )
    relay = connected(site, v5=True)
    define = encode_publish("home/secret", b"1", v5=True, properties=u16(0x23, 2))
    use = encode_publish("", b"22", v5=True, properties=u16(0x23, 2))
    play(
        relay,
        client(
            define,
            events=[("svc:thermo-1", "home/secret", "publish", 1, True)],
            signals=[Signal.ACTIVE],
        ),
    )
    site.blocked.discard(("svc:thermo-1", "home/secret", "publish"))  # approved meanwhile
    repaired = encode_publish("home/secret", b"22", v5=True, properties=u16(0x23, 2))
    play(
        relay,
        # the broker never saw alias 2 defined: it gets the topic with the alias
        client(
            use, to_broker=repaired, events=[("svc:thermo-1", "home/secret", "publish", 2, False)]
        ),
        # now it knows: the next use goes as it came
        client(use, to_broker=use, events=[("svc:thermo-1", "home/secret", "publish", 2, False)]),
    )
    # the same towards the client, for a blocked delivery
    deliver = encode_publish("home/cmd", b"on", v5=True, properties=u16(0x23, 4))
    again = encode_publish("", b"off", v5=True, properties=u16(0x23, 4))
    play(relay, broker(deliver, events=[("home/cmd", "svc:thermo-1", "deliver", 2, True)]))
    site.blocked.clear()
    play(
        relay,
        broker(
            again,
            to_client=encode_publish("home/cmd", b"off", v5=True, properties=u16(0x23, 4)),
            events=[("home/cmd", "svc:thermo-1", "deliver", 3, False)],
        ),
    )


@pytest.mark.parametrize("v5", [False, True])
def test_a_blocked_delivery_is_acknowledged_to_the_broker(v5: bool) -> None:
    site = Site(blocked={("locks/cmd", "svc:thermo-1", "deliver")})
    relay = connected(site, v5=v5)
    event = ("locks/cmd", "svc:thermo-1", "deliver", 6, True)
    allowed = encode_publish("home/cmd", b"on", v5=v5)
    play(
        relay,
        broker(encode_publish("locks/cmd", b"unlock", v5=v5), events=[event]),
        broker(
            encode_publish("locks/cmd", b"unlock", qos=1, packet_id=21, v5=v5),
            to_broker=encode_ack(PacketType.PUBACK, 21, v5=v5),
            events=[event],
        ),
        broker(
            encode_publish("locks/cmd", b"unlock", qos=2, packet_id=22, v5=v5) + allowed,
            to_broker=encode_ack(PacketType.PUBREC, 22, v5=v5),
            to_client=allowed,
            events=[event, ("home/cmd", "svc:thermo-1", "deliver", 2, False)],
        ),
        broker(
            encode_ack(PacketType.PUBREL, 22, v5=v5),
            to_broker=encode_ack(PacketType.PUBCOMP, 22, v5=v5),
        ),
    )


@pytest.mark.parametrize("v5", [False, True])
def test_a_refused_connect_is_answered_and_never_reaches_the_broker(v5: bool) -> None:
    site = Site(refused={"intruder"})
    relay = site.relay()
    connect = encode_connect("intruder", protocol_level=5 if v5 else 4)
    publish = encode_publish("locks/all", b"open", v5=v5)
    (close,) = play(
        relay,
        client(
            connect + publish,
            to_client=encode_connack(False, NOT_AUTHORIZED if v5 else 0x05, v5=v5),
            close=False,  # the CONNACK is flushed first
        ),
        client(publish),  # closed: nothing more is relayed
    )
    assert close.level == logging.INFO and "'intruder'" in close.reason
    assert relay.address is None and relay.stats.refused == 1


def test_the_brokers_refusing_connack_is_a_refused_signal() -> None:
    site = Site()
    relay = site.relay()
    connect = encode_connect("thermo-1", protocol_level=5)
    refusal = encode_connack(False, 0x86, v5=True)  # bad user name or password
    play(
        relay,
        client(connect, to_broker=connect),
        broker(refusal, to_client=refusal, signals=[Signal.REFUSED]),
    )


def test_a_malformed_packet_after_connack_gets_the_v5_disconnect_reason() -> None:
    site = Site()
    relay = connected(site, v5=True)
    ping = encode_pingreq()
    (close,) = play(
        relay,
        # the packet before the bad one reaches the broker, as the broker would have handled it
        client(
            ping + encode_publish("a/#", b"", v5=True),
            to_broker=ping,
            to_client=encode_disconnect(PROTOCOL_ERROR, v5=True),
            signals=[Signal.MALFORMED],
            close=False,
        ),
        client(ping),
    )
    assert "DISCONNECT 0x82" in close.reason and "wildcard" in close.reason
    assert relay.stats.decode_errors == 1


@pytest.mark.parametrize("v5", [False, True])
def test_bare_closes_for_3x_before_connack_and_a_second_connect(v5: bool) -> None:
    garbage = b"\x00\x00"
    connect = encode_connect("thermo-1", protocol_level=5 if v5 else 4)
    site = Site()
    # before the CONNACK, no DISCONNECT (v5 too): the client does not know the broker yet
    play(
        site.relay(),
        client(connect + garbage, to_broker=connect, signals=[Signal.MALFORMED], close=True),
    )
    # after it, a 3.1.1 client still gets a bare close; a second CONNECT in every version
    relay = connected(site, v5=v5)
    play(relay, client(connect, signals=[Signal.MALFORMED], close=True))
    if not v5:
        play(connected(site, v5=False), client(garbage, signals=[Signal.MALFORMED], close=True))


def test_unreadable_bytes_from_the_broker_abort_the_connection() -> None:
    relay = connected(Site(), v5=False)
    (close,) = play(relay, broker(b"\x00\x00", close=True))
    assert "broker" in close.reason


def test_opened_and_closed_are_signals() -> None:
    relay = Site().relay()
    assert relay.connection_opened().signals == [Signal.OPENED]
    assert relay.connection_closed().signals == [Signal.CLOSED]
    assert relay.client_data(encode_connect("late"), T).to_broker == []
