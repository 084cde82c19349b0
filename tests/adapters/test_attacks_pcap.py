"""The attack generators of tests/attacks.py recorded as pcap files and replayed.

Each attack runs against a real Mosquitto (not our proxy) through the recording relay of
tests/recorder.py, with a small site around it (paho clients on 127.0.0.10 and 127.0.0.11)
that talked first and goes on talking during and after the attack. The capture is written
with the broker on port 1883, the attack two minutes after the site's first minute, and
replayed by ``commgraph replay`` in this process (learning 1 minute, monitor mode): the same
kinds of alert as the live node raises, one to a few, naming the attacker (127.0.0.66), and
none about the site.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner
from paho.mqtt.client import MQTTv311

from adapters.mqtt.test_attacks_live import USERS, while_publishing
from adapters.mqtt.test_proxy_integration import SUCCESS, Client, Received, payloads
from attacks import (
    ATTACKER,
    brute_force,
    fuzz,
    idle_connections,
    publish_flood,
    the_alert,
    topic_storm,
)
from commgraph.cli import cli as cli_main
from conftest import Broker, raise_nofile_limit
from recorder import Recorder, recording

T = TypeVar("T")
PUB, SUB = "127.0.0.10", "127.0.0.11"
SITE = {"pub", "sub", PUB, SUB, "t/a"}  # what the site is known as in the replay
SUB_FLOW = (SUB, "tcp/1883", "127.0.0.1")  # the subscriber's TCP connection, as a flow


@dataclass
class Recorded:
    """A site recorded through the relay: its clients, and what the replay made of it."""

    recorder: Recorder
    pub: Client
    sub: Client
    tmp: Path

    def attack(self, attack: Callable[[], T], tag: str) -> tuple[T, list[Received]]:
        """Two minutes after the site learned (in the capture's time), ``attack`` runs while
        the site goes on publishing."""
        self.recorder.skip(120)
        return while_publishing(self.pub, self.sub, attack, tag)

    def replay(self, broken: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Write the capture, replay it into a fresh database; (alerts, edges). ``broken``:
        the connections whose MQTT the decoder is to give up on (one skipped packet each)."""
        capture = self.tmp / "attack.pcap"
        assert self.recorder.write(capture) > 0
        db = self.tmp / "replayed.db"
        report = cli(db, "replay", str(capture), "--learning", "1m", "--mode", "monitor")
        assert report["format"] == "pcap" and report["skipped"] == broken, report["errors"]
        return cli(db, "alerts"), cli(db, "edges")


def cli(db: Path, *args: str) -> Any:
    """``commgraph --db DB ARGS... --json`` in this process (as tests/test_cli.py does)."""
    result = CliRunner().invoke(cli_main, ["--db", str(db), *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def recorded(mosquitto: Broker, tmp_path: Path) -> Iterator[Recorded]:
    """The recording relay in front of the test's Mosquitto, and the site connected
    through it: ``sub`` on ``t/#``, ``pub`` publishing to ``t/a`` once (its learning)."""
    raise_nofile_limit()
    authed = mosquitto.log.with_name("mosquitto.passwd").exists()
    with recording((mosquitto.host, mosquitto.port)) as recorder:
        made: list[Client] = []

        def client(name: str, bind: str) -> Client:
            made.append(Client(recorder.port, name, MQTTv311, bind=bind))
            if authed:
                made[-1].paho.username_pw_set(name, USERS[name])
            made[-1].connect()
            return made[-1]

        try:
            sub = client("sub", SUB)
            assert sub.subscribe([("t/#", 1)]) == [1]
            pub = client("pub", PUB)
            assert pub.publish("t/a", b"learning", qos=1) == SUCCESS
            assert payloads(sub.expect(1)) == [b"learning"]
            yield Recorded(recorder, pub, sub, tmp_path)
        finally:
            for c in made:
                c.close()


def assert_site_unharmed(alerts: list[dict[str, Any]], edges: list[dict[str, Any]]) -> None:
    """No alert about the site, and each of its messages is on its edges."""
    about_site = [a for a in alerts if a["src"] in SITE or a["dst"] in SITE]
    assert about_site == [], f"alerts about the site: {about_site}"
    by_edge = {(e["src"], e["relation"], e["dst"]): e for e in edges}
    published = by_edge[("pub", "publish", "t/a")]
    delivered = by_edge[("t/a", "deliver", "sub")]
    # the learning message, those during the attack (at least one) and the one after
    assert published["count"] >= 3 and published["label"] == "learned"
    assert delivered["count"] == published["count"]


def assert_host_question(alerts: list[dict[str, Any]], allowed: set[str]) -> None:
    """The capture shows the attacker's host as a newcomer too: one question naming it."""
    question = the_alert(alerts, "new-service", ATTACKER, allowed=allowed)
    assert question["detail"]["address"] == ATTACKER


@pytest.mark.mosquitto(users=USERS)
def test_a_recorded_brute_force_is_one_auth_failure_alert(recorded: Recorded) -> None:
    guesses = [f"guess{n:03d}" for n in range(40)]
    port = recorded.recorder.port
    codes, _ = recorded.attack(lambda: brute_force("127.0.0.1", port, "alice", guesses), "bf")
    assert codes == [0x05, 0x87] * 20
    alerts, edges = recorded.replay()
    allowed = {"new-service", "connection-flood", "auth-failure"}
    alert = the_alert(alerts, "auth-failure", ATTACKER, allowed=allowed)
    assert alert["detail"]["address"] == ATTACKER
    assert alert["detail"]["usernames"] == ["alice"]
    assert alert["count"] >= len(guesses) - 5
    assert_host_question(alerts, allowed)
    assert_site_unharmed(alerts, edges)


@pytest.mark.mosquitto(extra="max_queued_messages 0\n")
def test_a_recorded_flood_is_one_flood_alert(recorded: Recorded) -> None:
    port = recorded.recorder.port
    sent, _ = recorded.attack(lambda: publish_flood("127.0.0.1", port, count=10_000), "fl")
    assert sent == 10_000
    alerts, edges = recorded.replay()
    # The subscriber's TCP connection carried the 10,000 deliveries: at the flow level of
    # the capture its host's edge is far faster, in far larger segments, than it learned.
    # That is what the capture shows (the live proxy sees no flows); nothing else of the
    # site is alerted about.
    sub_flow = [a for a in alerts if (a["src"], a["relation"], a["dst"]) == SUB_FLOW]
    assert {a["kind"] for a in sub_flow} <= {"rate", "size"}
    alerts = [a for a in alerts if a not in sub_flow]
    allowed = {"new-service", "flood"}
    alert = the_alert(alerts, "flood", "flooder", allowed=allowed)
    assert alert["count"] >= 10_000 - 500 * 10
    question = the_alert(alerts, "new-service", "flooder", allowed=allowed)
    assert question["detail"]["examples"] == ["publish t/flood"]
    # the capture's connection bound the client id to its address, as the proxy does
    assert question["detail"]["address"] == ATTACKER
    assert question["detail"]["client_id"] == "flooder"
    assert_host_question(alerts, allowed)
    flood = {(e["src"], e["dst"]): e["count"] for e in edges if "t/flood" in (e["src"], e["dst"])}
    assert flood == {("flooder", "t/flood"): 10_000, ("t/flood", "sub"): 10_000}
    assert_site_unharmed(alerts, edges)


def test_a_recorded_topic_storm_is_one_edge_burst_alert(recorded: Recorded) -> None:
    port = recorded.recorder.port
    sent, _ = recorded.attack(lambda: topic_storm("127.0.0.1", port, topics=20_000), "st")
    assert sent == 20_000
    alerts, edges = recorded.replay()
    allowed = {"new-service", "flood", "edge-burst"}
    burst = the_alert(alerts, "edge-burst", "stormer", allowed=allowed)
    assert burst["detail"]["edges"] + burst["detail"]["overflow"] >= 19_000
    assert burst["detail"]["overflow"] > 0
    assert_host_question(alerts, allowed)
    assert len(edges) <= 5_000 + 50, "the storm grew the graph beyond the service's cap"
    assert_site_unharmed(alerts, edges)


def test_recorded_fuzzing_is_one_malformed_alert(recorded: Recorded) -> None:
    port = recorded.recorder.port
    cases, _ = recorded.attack(lambda: fuzz("127.0.0.1", port, count=30), "fz")
    assert [case.closed for case in cases] == [True] * 30  # Mosquitto closed every one
    alerts, edges = recorded.replay(broken=30)
    allowed = {"new-service", "connection-flood", "malformed"}
    alert = the_alert(alerts, "malformed", ATTACKER, allowed=allowed)
    assert alert["detail"]["address"] == ATTACKER
    assert alert["count"] >= 30 - 2
    assert_host_question(alerts, allowed)
    assert_site_unharmed(alerts, edges)


def test_recorded_idle_connections_are_one_connection_flood_alert(recorded: Recorded) -> None:
    port = recorded.recorder.port

    def hold() -> int:
        with idle_connections("127.0.0.1", port, count=1000) as held:
            return len(held.sockets)

    opened, _ = recorded.attack(hold, "id")
    assert opened == 1000
    alerts, edges = recorded.replay()
    # the host's TCP packets (1,000 handshakes in a second or two) are also a flood
    allowed = {"new-service", "connection-flood", "flood"}
    alert = the_alert(alerts, "connection-flood", ATTACKER, allowed=allowed)
    assert alert["detail"]["address"] == ATTACKER
    assert alert["detail"]["open"] >= 101
    assert_host_question(alerts, allowed)
    assert_site_unharmed(alerts, edges)
