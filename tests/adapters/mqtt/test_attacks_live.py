"""The attack generators of tests/attacks.py through the live node: a real Mosquitto, the
proxy (``commgraph run``), a site that learned (real paho clients), and the attacker on a
loopback address of its own (127.0.0.66). Each attack gives one to a few alerts of the right
kind that name the attacker, never thousands, and the site's clients keep working during
and after it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from paho.mqtt.client import MQTTv311

from adapters.mqtt.test_proxy_integration import (
    SUCCESS,
    Client,
    Received,
    Site,
    clients,
    learned_site,
    payloads,
    wait_learning_over,
)
from attacks import (
    ATTACKER,
    brute_force,
    fuzz,
    idle_connections,
    publish_flood,
    the_alert,
    topic_storm,
)
from conftest import Proxy, raise_nofile_limit, wait_until

__all__ = ["clients"]  # fixtures used here

T = TypeVar("T")
BENIGN_DURING = 6  # messages the site publishes while an attack runs (then one after)
USERS = {"pub": "pub-secret", "sub": "sub-secret", "watch": "watch-secret", "alice": "secret"}


SETTLED = 2.5  # seconds without change: more than two of the node's counter writes


def alerts_written(proxy: Proxy, at_least: int = 1) -> list[dict[str, Any]]:
    """The node's alerts once it has written ``at_least`` and they stayed the same for
    longer than the node takes to write its counters behind (once a second)."""
    seen: dict[str, Any] = {"key": None, "since": 0.0}

    def settled() -> list[dict[str, Any]] | None:
        done = proxy.cli("alerts", "--json")
        rows: list[dict[str, Any]] = json.loads(done.stdout) if done.returncode == 0 else []
        key = [(a["id"], a["count"]) for a in rows]
        now = time.monotonic()
        if key != seen["key"]:
            seen["key"], seen["since"] = key, now
            return None
        return rows if len(rows) >= at_least and now - seen["since"] >= SETTLED else None

    return wait_until(settled, 60, interval=0.3, what=f"{at_least} alert(s) written")


def during(site: Site, attack: Callable[[], T], tag: str) -> tuple[T, list[Received]]:
    """:func:`while_publishing` with the site's ``pub`` and ``sub``."""
    return while_publishing(site.pub, site.sub, attack, tag)


def while_publishing(
    pub: Client, sub: Client, attack: Callable[[], T], tag: str
) -> tuple[T, list[Received]]:
    """Run ``attack`` in a thread while ``pub`` publishes to ``t/a`` (QoS 1); ``sub`` (on
    ``t/#``) must get every one of those, during the attack and after it. Returns what the
    attack returned and the other messages ``sub`` got meanwhile."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(attack())
        except BaseException as exc:  # raised below, in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"attack-{tag}", daemon=True)
    sent: list[bytes] = []
    thread.start()
    # At a device's pace: a few messages, not the ten a minute at which a learned edge that
    # sent one is too fast for the rate detector (that would be an alert about the site).
    while thread.is_alive() and len(sent) < BENIGN_DURING:
        sent.append(f"{tag}-during-{len(sent)}".encode())
        assert pub.publish("t/a", sent[-1], qos=1, timeout=15) == SUCCESS
        thread.join(0.3)
    thread.join(90)
    assert not thread.is_alive(), "the attack did not end within its bounds"
    if failure:
        raise failure[0]
    sent.append(f"{tag}-after".encode())
    assert pub.publish("t/a", sent[-1], qos=1, timeout=15) == SUCCESS

    seen: list[bytes] = []
    others: list[Received] = []

    def all_there() -> bool:
        for message in sub.drain():
            if message.payload.startswith(tag.encode()):
                seen.append(message.payload)
            else:
                others.append(message)
        return set(sent) <= set(seen)

    wait_until(all_there, 30, interval=0.1, what="the site's own messages during the attack")
    assert sorted(seen) == sorted(sent), "a message of the site was lost or doubled"
    assert pub.unexpected_disconnects == 0 and sub.unexpected_disconnects == 0
    return result[0], others


@pytest.fixture
def monitored(start_proxy: Callable[..., Proxy], clients: Callable[..., Client]) -> Site:
    """A site that learned for 2 s behind a monitor-mode proxy (clients on 127.0.0.1);
    unknown clients have 60 s for their CONNECT (the idle attack holds them)."""
    raise_nofile_limit()
    proxy = start_proxy(mode="monitor", learning="2s", mqtt={"connect_timeout": "60s"})
    return learned_site(proxy, MQTTv311, clients)


# -- password brute force ---------------------------------------------------------------------


@pytest.fixture
def authed_clients() -> Iterator[Callable[[int, str], Client]]:
    """Factory: ``make(port, name)`` -> a client connected with ``USERS[name]``'s password."""
    made: list[Client] = []

    def make(port: int, name: str) -> Client:
        client = Client(port, name, MQTTv311)
        client.paho.username_pw_set(name, USERS[name])
        made.append(client)
        client.connect()
        return client

    yield make
    for client in made:
        client.close()


@pytest.mark.mosquitto(users=USERS)
def test_a_password_brute_force_is_one_auth_failure_alert(
    start_proxy: Callable[..., Proxy], authed_clients: Callable[[int, str], Client]
) -> None:
    proxy = start_proxy(mode="monitor", learning="2s")
    watch = authed_clients(proxy.port, "watch")
    assert watch.subscribe([("t/c", 1)]) == [1]
    pub = authed_clients(proxy.port, "pub")
    sub = authed_clients(proxy.port, "sub")
    assert sub.subscribe([("t/#", 1)]) == [1]
    assert pub.publish("t/a", b"learning", qos=1) == SUCCESS
    assert payloads(sub.expect(1)) == [b"learning"]
    wait_learning_over(proxy, {"pub", "sub", "watch"})
    site = Site(proxy, MQTTv311, pub, sub, watch)

    guesses = [f"guess{n:03d}" for n in range(40)]
    guess = lambda: brute_force("127.0.0.1", proxy.port, "alice", guesses)  # noqa: E731
    codes, _ = during(site, guess, "bf")
    # every guess answered as Mosquitto answers a wrong password: 0x05 (3.1.1), 0x87 (5)
    assert codes == [0x05, 0x87] * 20

    alert = the_alert(alerts_written(proxy), "auth-failure", ATTACKER, allowed={"connection-flood"})
    assert alert["detail"]["address"] == ATTACKER
    assert alert["detail"]["usernames"] == ["alice"]
    assert alert["count"] >= len(guesses) - 5  # one per refusal past the ceiling of 5
    assert len(alert["detail"]["client_ids"]) == 5  # its first examples, not 40


# -- a flood of publishes ---------------------------------------------------------------------


@pytest.mark.mosquitto(extra="max_queued_messages 0\n")
def test_a_flood_of_10000_publishes_is_one_flood_alert(monitored: Site) -> None:
    proxy, sub = monitored.proxy, monitored.sub
    flood = lambda: publish_flood("127.0.0.1", proxy.port, count=10_000)  # noqa: E731
    sent, delivered = during(monitored, flood, "fl")
    assert sent == 10_000

    # monitor mode: every one is delivered, as the broker alone would
    def all_delivered() -> bool:
        delivered.extend(sub.drain())
        return len(delivered) >= 10_000

    wait_until(all_delivered, 30, interval=0.1, what="the flood's deliveries")
    assert [m.payload for m in delivered] == [b"%d" % n for n in range(10_000)]
    alerts = alerts_written(proxy, at_least=2)
    alert = the_alert(alerts, "flood", "flooder", allowed={"new-service"})
    assert alert["count"] >= 10_000 - 500 * 10  # over the ceiling of 500 a second
    assert (alert["detail"]["address"], alert["detail"]["client_id"]) == (ATTACKER, "flooder")
    question = the_alert(alerts, "new-service", "flooder", allowed={"flood"})
    assert question["detail"]["address"] == ATTACKER
    assert question["detail"]["examples"] == ["publish t/flood"]


# -- a storm of topics ------------------------------------------------------------------------


def test_a_storm_of_20000_topics_is_one_edge_burst_alert(monitored: Site) -> None:
    proxy = monitored.proxy
    storm = lambda: topic_storm("127.0.0.1", proxy.port, topics=20_000)  # noqa: E731
    sent, _ = during(monitored, storm, "st")
    assert sent == 20_000

    alerts = alerts_written(proxy, at_least=2)
    burst = the_alert(alerts, "edge-burst", "stormer", allowed={"new-service", "flood"})
    detail = burst["detail"]
    assert (detail["address"], detail["client_id"]) == (ATTACKER, "stormer")
    assert detail["edges"] + detail["overflow"] >= 19_000  # all but its first 1,000 a minute
    assert detail["overflow"] > 0, "beyond its cap of 5,000 edges nothing is recorded"
    question = the_alert(alerts, "new-service", "stormer", allowed={"edge-burst", "flood"})
    assert question["detail"]["address"] == ATTACKER
    status = proxy.cli_json("edges")
    assert len(status) <= 5_000 + 50, "the storm grew the graph beyond the service's cap"


# -- fuzzed packets ---------------------------------------------------------------------------


def test_fuzzed_packets_are_one_malformed_alert(monitored: Site) -> None:
    proxy = monitored.proxy
    cases, _ = during(monitored, lambda: fuzz("127.0.0.1", proxy.port, count=30), "fz")
    assert len(cases) == 30
    assert all(case.closed for case in cases), "the proxy kept a broken connection open"

    alert = the_alert(alerts_written(proxy), "malformed", ATTACKER, allowed={"connection-flood"})
    assert alert["detail"]["address"] == ATTACKER
    assert alert["count"] >= 30 - 2  # one per broken packet past the ceiling of 3


# -- connections held idle --------------------------------------------------------------------


def test_1000_idle_connections_are_one_connection_flood_alert(monitored: Site) -> None:
    proxy = monitored.proxy
    opened: list[int] = []

    def hold() -> int:
        with idle_connections("127.0.0.1", proxy.port, count=1000) as held:
            opened.append(len(held.sockets))
            # held until the node has said so; monitor mode closes none of them
            wait_until(
                lambda: any(a["kind"] == "connection-flood" for a in alerts_written(proxy)),
                30,
                interval=0.5,
                what="the connection-flood alert",
            )
            return held.still_open()

    still_open, _ = during(monitored, hold, "id")
    assert opened == [1000]
    assert still_open == 1000, "monitor mode closed idle connections"

    alert = the_alert(alerts_written(proxy), "connection-flood", ATTACKER, allowed=set())
    assert alert["detail"]["address"] == ATTACKER
    assert alert["detail"]["open"] >= 101  # beyond the ceiling of 100 idle at once


# -- protect mode -----------------------------------------------------------------------------


@pytest.fixture
def protected(start_proxy: Callable[..., Proxy], clients: Callable[..., Client]) -> Site:
    """:func:`monitored`, in protect mode."""
    raise_nofile_limit()
    proxy = start_proxy(mode="protect", learning="2s", mqtt={"connect_timeout": "60s"})
    return learned_site(proxy, MQTTv311, clients)


@pytest.mark.mosquitto(extra="max_queued_messages 0\n")
def test_in_protect_mode_a_newcomers_flood_is_held_and_one_flood_alert(protected: Site) -> None:
    proxy = protected.proxy
    flood = lambda: publish_flood("127.0.0.1", proxy.port, count=10_000)  # noqa: E731
    sent, delivered = during(protected, flood, "pf")
    assert sent == 10_000
    delivered += protected.sub.collect(0.5)
    assert [m for m in delivered if m.topic == "t/flood"] == [], "a held newcomer was delivered"

    alerts = alerts_written(proxy, at_least=2)
    alert = the_alert(alerts, "flood", "flooder", allowed={"new-service"})
    assert alert["count"] >= 10_000 - 500 * 10
    assert alert["detail"]["address"] == ATTACKER
    question = the_alert(alerts, "new-service", "flooder", allowed={"flood"})
    assert question["detail"]["address"] == ATTACKER
    services = {s["name"]: s["phase"] for s in proxy.cli_json("services")}
    assert services["flooder"] == "held"


def test_in_protect_mode_idle_connections_beyond_the_ceiling_are_refused(
    protected: Site,
) -> None:
    proxy = protected.proxy

    def hold() -> int:
        with idle_connections("127.0.0.1", proxy.port, count=1000) as held:
            assert len(held.sockets) + held.failed == 1000
            # the node refuses (resets) what is beyond its ceilings: 20 a second, 100 idle
            open_now: list[int] = []

            def refused() -> bool:
                open_now.append(held.still_open())
                return open_now[-1] <= 100 + 20

            wait_until(refused, 20, interval=0.2, what="the connections beyond the ceiling to go")
            return open_now[-1]

    still_open, _ = during(protected, hold, "pi")
    assert 1 <= still_open <= 120

    alert = the_alert(alerts_written(proxy), "connection-flood", ATTACKER, allowed=set())
    assert alert["detail"]["address"] == ATTACKER
    assert alert["count"] >= 1000 - 120  # one per refused connection
