"""Trust no newcomer, live: a real Mosquitto, the proxy, real paho clients from distinct
loopback addresses. A client id never seen before, after the site learned, is held (protect),
or asked about (monitor), exactly once; the owner's answer lets it learn or refuses it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from paho.mqtt.client import MQTTv5

from adapters.mqtt.test_proxy_integration import (
    NOT_AUTHORIZED,
    QUIET,
    SUCCESS,
    Client,
    RawConnection,
    blocked_publish_code,
    clients,
    connect_packet,
    learned_site,
    payloads,
    protocol,
)
from conftest import Proxy, wait_until

__all__ = ["clients", "protocol"]  # fixtures used here

INTRUDER = "127.0.0.90"
REFUSED_V3 = 0x05  # CONNACK: not authorized


def alerts(proxy: Proxy) -> list[dict[str, Any]]:
    done = proxy.cli("alerts", "--json")
    return json.loads(done.stdout) if done.returncode == 0 else []


def questions(proxy: Proxy, who: str) -> list[dict[str, Any]]:
    return [a for a in alerts(proxy) if a["kind"] == "new-service" and a["src"] == who]


def wait_question(proxy: Proxy, who: str, examples: int = 1) -> dict[str, Any]:
    def asked() -> dict[str, Any] | None:
        found = questions(proxy, who)
        if found and len(found[0]["detail"].get("examples", ())) >= examples:
            return found[0]
        return None

    return wait_until(asked, 10, interval=0.2, what=f"the new-service question about {who}")


def connack_code(proxy: Proxy, client_id: str, protocol: int) -> int:
    raw = RawConnection(proxy.port, bind=INTRUDER)
    try:
        raw.send(connect_packet(client_id, protocol))
        first, body = raw.read_packet()
        assert first == 0x20, f"expected a CONNACK, got {first:#x}"
        return body[1]
    finally:
        raw.close()


def test_an_intruder_in_protect_mode_is_held_then_learns_or_is_refused(
    protocol: int, start_proxy: Callable[..., Proxy], clients: Callable[..., Client]
) -> None:
    site = learned_site(start_proxy(mode="protect", learning="2s"), protocol, clients)
    proxy, sub = site.proxy, site.sub
    intruder = clients(proxy.port, "intruder-7", protocol, bind=INTRUDER)
    for n in range(5):
        code = intruder.publish("t/a", f"open {n}".encode(), qos=1)
        assert code == blocked_publish_code(protocol)
    assert sub.collect(QUIET) == [], "a command of the newcomer was delivered"

    question = wait_question(proxy, "intruder-7")
    assert question["state"] == "pending" and question["dst"] == "node-a"
    assert question["detail"]["client_id"] == "intruder-7"
    assert question["detail"]["address"] == INTRUDER
    assert question["detail"]["examples"] == ["publish t/a"]
    assert [a["kind"] for a in alerts(proxy)] == ["new-service"], "one question, nothing else"
    services = {s["name"]: s for s in proxy.cli_json("services")}
    assert services["intruder-7"]["phase"] == "held"

    # the owner says "it is mine": it learns from now on, what it asked for is approved
    done = proxy.cli("approve", str(question["id"]))
    assert done.returncode == 0, done.stderr
    assert "intruder-7 is yours" in done.stdout

    def delivered() -> bool:
        intruder.publish("t/a", b"approved", qos=1)
        return b"approved" in payloads(sub.collect(0.5))

    wait_until(delivered, 10, interval=0.1, what="the approved newcomer's message to arrive")
    wait_until(
        lambda: (
            {s["name"]: s for s in proxy.cli_json("services")}["intruder-7"]["phase"] == "learning"
        ),
        10,
        interval=0.2,
        what="the approved newcomer to learn",
    )

    # a second intruder is denied: blocked, and its next CONNECT refused as bad credentials
    other = clients(proxy.port, "intruder-8", protocol, bind=INTRUDER)
    assert other.publish("t/a", b"x", qos=1) == blocked_publish_code(protocol)
    denied = wait_question(proxy, "intruder-8")
    done = proxy.cli("deny", str(denied["id"]))
    assert done.returncode == 0, done.stderr
    other.close()
    expected = NOT_AUTHORIZED if protocol == MQTTv5 else REFUSED_V3
    wait_until(
        lambda: connack_code(proxy, "intruder-8", protocol) == expected,
        10,
        interval=0.2,
        what="the denied newcomer's CONNECT to be refused",
    )
    # the site goes on
    assert site.pub.publish("t/a", b"still normal", qos=1) == SUCCESS
    assert b"still normal" in payloads(sub.expect(1))


def test_an_intruder_in_monitor_mode_is_delivered_and_asked_about_once(
    protocol: int, start_proxy: Callable[..., Proxy], clients: Callable[..., Client]
) -> None:
    site = learned_site(start_proxy(mode="monitor", learning="2s"), protocol, clients)
    intruder = clients(site.proxy.port, "intruder-7", protocol, bind=INTRUDER)
    for n in range(5):
        assert intruder.publish("t/a", f"open {n}".encode(), qos=1) == SUCCESS
    assert len(site.sub.expect(5)) == 5
    question = wait_question(site.proxy, "intruder-7")
    assert question["detail"]["address"] == INTRUDER
    assert [a["kind"] for a in alerts(site.proxy)] == ["new-service"]


def test_admission_learn_is_the_old_behaviour(
    protocol: int, start_proxy: Callable[..., Proxy], clients: Callable[..., Client]
) -> None:
    proxy = start_proxy(mode="protect", learning="2s", admission={"new": "learn"})
    site = learned_site(proxy, protocol, clients)
    intruder = clients(proxy.port, "intruder-7", protocol, bind=INTRUDER)
    assert intruder.publish("t/a", b"learned", qos=1) == SUCCESS
    assert payloads(site.sub.expect(1)) == [b"learned"]
    assert alerts(proxy) == []


def test_a_sensor_added_after_bootstrap_learns_and_is_one_question(
    start_proxy: Callable[..., Proxy], clients: Callable[..., Client]
) -> None:
    protocol = MQTTv5
    site = learned_site(start_proxy(mode="monitor", learning="2s"), protocol, clients)
    sensor = clients(site.proxy.port, "thermo-bath", protocol, bind="127.0.0.7")
    for n in range(4):
        assert sensor.publish("t/bath", f"{20 + n}".encode(), qos=1) == SUCCESS
        assert sensor.publish("t/bath/humidity", b"50", qos=1) == SUCCESS
    assert len(site.sub.expect(8)) == 8  # the subscriber to t/# receives it: learned too
    question = wait_question(site.proxy, "thermo-bath", examples=2)
    assert question["detail"]["examples"] == ["publish t/bath", "publish t/bath/humidity"]
    edges = [e for e in site.proxy.cli_json("edges") if "t/bath" in (e["src"], e["dst"])]
    assert edges and all(e["label"] == "learned" for e in edges)
    assert len(alerts(site.proxy)) == 1
