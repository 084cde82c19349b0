"""The attack generators (tests/attacks.py) and the pcap recorder (tests/recorder.py) on
their own, against a real Mosquitto directly: they do what their names say, so that the
tests built on them measure the node and not the tools."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from paho.mqtt.client import MQTTv311

from adapters.mqtt.test_proxy_integration import (
    SUCCESS,
    Client,
    RawConnection,
    connect_packet,
    payloads,
)
from attacks import (
    ATTACKER,
    FUZZ_KINDS,
    accept_queue,
    brute_force,
    first_decode_error,
    fuzz,
    idle_connections,
    malformed_packets,
    publish_flood,
    topic_storm,
)
from commgraph.adapters.pcap import PacketDecoder, read_packets
from commgraph.detectors.guardrails import Signal, SignalNote
from conftest import Broker, raise_nofile_limit
from recorder import recording

USERS = {"alice": "secret"}


@pytest.fixture
def subscriber(mosquitto: Broker) -> Iterator[Callable[[str], Client]]:
    made: list[Client] = []

    def make(topic_filter: str) -> Client:
        client = Client(mosquitto.port, f"watcher-{len(made)}", MQTTv311, bind="127.0.0.10")
        users = mosquitto.log.with_name("mosquitto.passwd").exists()
        if users:
            client.paho.username_pw_set("alice", USERS["alice"])
        made.append(client)
        client.connect()
        assert client.subscribe([(topic_filter, 0)]) == [0]
        return client

    yield make
    for client in made:
        client.close()


@pytest.mark.mosquitto(users=USERS)
def test_brute_force_guesses_until_the_list_ends(mosquitto: Broker) -> None:
    guesses = ["a", "b", "c", "secret", "d"]
    codes = brute_force(mosquitto.host, mosquitto.port, "alice", guesses)
    # Mosquitto's answers to a wrong password: 0x05 in 3.1.1, 0x87 in 5; the right one: 0
    assert codes == [0x05, 0x87, 0x05, 0x00, 0x05]
    assert mosquitto.log.read_text().count(f"New connection from {ATTACKER}:") == 5


@pytest.mark.mosquitto(extra="max_queued_messages 0\n")
def test_a_publish_flood_sends_10000_in_seconds_and_all_arrive(
    mosquitto: Broker, subscriber: Callable[[str], Client]
) -> None:
    watcher = subscriber("t/#")
    assert publish_flood(mosquitto.host, mosquitto.port, count=10_000, timeout=30) == 10_000
    got = watcher.expect(10_000, timeout=30)
    assert [m.payload for m in got] == [b"%d" % n for n in range(10_000)]
    assert {m.topic for m in got} == {"t/flood"}


@pytest.mark.mosquitto(extra="max_queued_messages 0\n")
def test_a_topic_storm_publishes_to_distinct_topics(
    mosquitto: Broker, subscriber: Callable[[str], Client]
) -> None:
    watcher = subscriber("storm/#")
    assert topic_storm(mosquitto.host, mosquitto.port, topics=3_000) == 3_000
    topics = [m.topic for m in watcher.expect(3_000, timeout=30)]
    assert len(set(topics)) == 3_000 and topics[0] == "storm/0" and topics[-1] == "storm/2999"


def test_fuzz_cases_are_deterministic_malformed_and_of_every_kind() -> None:
    cases = malformed_packets(seed=12, count=30)
    assert cases == malformed_packets(seed=12, count=30)
    assert [c.data for c in cases] != [c.data for c in malformed_packets(seed=13, count=30)]
    assert Counter(c.kind for c in cases) == {kind: 6 for kind in FUZZ_KINDS}
    assert {c.protocol_level for c in cases} == {4, 5}
    for case in cases:
        assert first_decode_error(case) is not None, f"our codec accepts {case}"


def test_mosquitto_closes_every_fuzzed_connection(mosquitto: Broker) -> None:
    cases = fuzz(mosquitto.host, mosquitto.port, seed=7, count=20)
    assert len(cases) == 20
    assert [c.kind for c in cases if not c.closed] == []


def test_idle_connections_are_held_open_and_the_broker_goes_on(
    mosquitto: Broker, subscriber: Callable[[str], Client]
) -> None:
    raise_nofile_limit()
    watcher = subscriber("t/#")
    # paho waits with select(), which cannot watch a socket numbered 1024 or more: the
    # site's client connects before the attack takes a thousand descriptors of this process
    pub = Client(mosquitto.port, "still-served", MQTTv311)
    pub.connect()
    with idle_connections(mosquitto.host, mosquitto.port, count=1000) as held:
        assert (len(held.sockets), held.failed) == (1000, 0)
        assert {s.getsockname()[0] for s in held.sockets} == {ATTACKER}
        waiting = accept_queue(mosquitto.port)
        assert waiting is not None and waiting < 100, "the listen backlog was overrun"
        try:
            assert pub.publish("t/a", b"served", qos=1) == SUCCESS
        finally:
            pub.close()
        assert payloads(watcher.expect(1)) == [b"served"]
        newcomer = RawConnection(mosquitto.port)  # and a new connection is still answered
        try:
            newcomer.send(connect_packet("late", MQTTv311))
            first, body = newcomer.read_packet()
            assert (first >> 4, body[-1]) == (2, 0), "CONNACK, accepted"
        finally:
            newcomer.sock.close()
        assert held.still_open() == 1000
    assert accept_queue(mosquitto.port) == 0


def test_the_recorder_writes_what_went_through_as_a_pcap(mosquitto: Broker, tmp_path: Path) -> None:
    with recording((mosquitto.host, mosquitto.port)) as recorder:
        assert publish_flood("127.0.0.1", recorder.port, count=3, topic="t/x") == 3
        recorder.skip(60)
        with socket.create_connection(("127.0.0.1", recorder.port)) as sock:
            sock.sendall(b"\x00\x00")  # garbage: the broker closes
            assert sock.recv(10) == b""
        capture = tmp_path / "x.pcap"
        written = recorder.write(capture)
    records = [item for _, item in read_packets(capture, decoder=PacketDecoder(signals=True))]
    assert written > 10
    mqtt = [r for r in records if isinstance(r, tuple) and r[3] == "publish"]
    assert [(r[1], r[2]) for r in mqtt] == [("flooder", "t/x")] * 3
    notes = [r for r in records if isinstance(r, SignalNote)]
    assert [(n.signal, n.address) for n in notes] == [
        (Signal.OPENED, ATTACKER),
        (Signal.ACTIVE, ATTACKER),
        (Signal.CLOSED, ATTACKER),
        (Signal.OPENED, "127.0.0.1"),
        (Signal.MALFORMED, "127.0.0.1"),
        (Signal.CLOSED, "127.0.0.1"),
    ]
    assert notes[3].ts - notes[0].ts >= 60  # the skipped minute
    flows = [r for r in records if isinstance(r, tuple) and r[3] == "tcp/1883"]
    assert {(r[1], r[2]) for r in flows} == {(ATTACKER, "127.0.0.1"), ("127.0.0.1", "127.0.0.1")}
