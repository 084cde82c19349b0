"""Home Assistant MQTT discovery against a real Mosquitto, a paho client playing Home Assistant."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from commgraph.alerts import Action
from commgraph.config import parse_config
from commgraph.errors import ConfigError
from commgraph.homeassistant import (
    NodeView,
    ServiceView,
    alert_buttons,
    command_topic,
    node_entities,
    object_id,
    parse_command,
)
from conftest import HOST, Broker, Proxy, wait_until

TIMEOUT = 20.0
PREFIX = "homeassistant"

# The keys Home Assistant's MQTT platforms document as required, and the ones discovery
# needs to put an entity on a device (unique_id, device identifiers) with availability.
REQUIRED = {
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic"},
    "button": {"command_topic"},
    "event": {"state_topic", "event_types"},
}
ID = re.compile(r"[a-zA-Z0-9_-]+")


class HomeAssistantPlayer:
    """Subscribed to discovery and the node's topics; keeps every topic's last payload."""

    def __init__(self, broker: Broker) -> None:
        self.last: dict[str, bytes] = {}
        self.history: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="home-assistant")
        ready = threading.Event()

        def on_connect(client: mqtt.Client, *_: Any) -> None:
            client.subscribe([(f"{PREFIX}/#", 1), ("commgraph/v1/ha/#", 1)])

        def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
            with self.lock:
                self.last[message.topic] = bytes(message.payload)
                self.history.append((message.topic, bytes(message.payload)))

        self.paho.on_connect = on_connect
        self.paho.on_subscribe = lambda *_: ready.set()
        self.paho.on_message = on_message
        self.paho.connect(broker.host, broker.port, keepalive=30)
        self.paho.loop_start()
        assert ready.wait(TIMEOUT), "home assistant: no SUBACK"

    def configs(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {
                t: json.loads(p)
                for t, p in self.last.items()
                if t.startswith(f"{PREFIX}/") and t.endswith("/config") and p
            }

    def get(self, topic: str) -> bytes | None:
        with self.lock:
            return self.last.get(topic)

    def press(self, topic: str) -> None:
        info = self.paho.publish(topic, b"PRESS", qos=1)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def device(port: int, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(HOST, port, keepalive=30)
    client.loop_start()
    assert connected.wait(TIMEOUT), f"{client_id}: no CONNACK"
    return client


def publish(client: mqtt.Client, topic: str) -> None:
    info = client.publish(topic, b"21.5", qos=1)
    info.wait_for_publish(TIMEOUT)
    assert info.is_published(), f"no PUBACK for {topic}"


def validate(topic: str, config: dict[str, Any]) -> str:
    """Check one discovery config against the schema; returns its component."""
    parts = topic.split("/")
    assert len(parts) == 5 and parts[0] == PREFIX and parts[4] == "config", topic
    component, node_id, object_id_ = parts[1], parts[2], parts[3]
    assert component in REQUIRED, topic
    assert ID.fullmatch(node_id) and ID.fullmatch(object_id_), topic
    missing = REQUIRED[component] - config.keys()
    assert not missing, f"{topic}: missing {missing}"
    assert isinstance(config["unique_id"], str) and config["unique_id"]
    device_ = config["device"]
    assert isinstance(device_["identifiers"], list) and device_["identifiers"], topic
    assert device_["name"]
    (availability,) = config["availability"]
    assert {"topic", "payload_available", "payload_not_available"} <= availability.keys()
    if component == "event":
        assert "new-edge" in config["event_types"]
    return component


def learned_thermo(proxy: Proxy) -> mqtt.Client:
    thermo = device(proxy.port, "thermo-1")
    publish(thermo, "home/kitchen/temp")

    def over() -> bool:
        rows = proxy.cli_json("services")
        return any(r["name"] == "thermo-1" and r["phase"] == "active" for r in rows)

    wait_until(over, TIMEOUT, 0.2, "thermo-1 to finish learning")
    return thermo


def test_home_assistant_sees_the_node_and_approves_an_alert_with_a_button(
    start_proxy: Callable[..., Proxy], mosquitto: Broker
) -> None:
    ha = HomeAssistantPlayer(mosquitto)
    try:
        proxy = start_proxy(mode="monitor", learning="2s", homeassistant={"discovery": True})
        thermo = learned_thermo(proxy)
        publish(thermo, "home/kitchen/new")
        alert = wait_until(
            lambda: next(iter(proxy.cli_json("alerts", "--state", "pending")), None),
            TIMEOUT,
            0.2,
            "a pending alert",
        )
        approve = f"/alert_{alert['id']}_approve/config"

        def buttons() -> dict[str, dict[str, Any]]:
            return {t: c for t, c in ha.configs().items() if t.startswith(f"{PREFIX}/button/")}

        wait_until(lambda: any(t.endswith(approve) for t in buttons()), TIMEOUT, 0.1, approve)
        configs = ha.configs()
        components = {validate(topic, config) for topic, config in configs.items()}
        assert components == set(REQUIRED)
        assert len({c["unique_id"] for c in configs.values()}) == len(configs)
        availability = configs[next(iter(configs))]["availability"][0]["topic"]
        wait_until(lambda: ha.get(availability) == b"online", TIMEOUT, 0.1, "online")

        by_name = {c["name"]: c for c in configs.values()}
        pending_state = by_name["Pending alerts"]["state_topic"]
        anomaly_state = by_name["Anomaly"]["state_topic"]
        wait_until(lambda: ha.get(pending_state) == b"1", TIMEOUT, 0.1, "pending = 1")
        assert ha.get(anomaly_state) == b"ON"
        service_state = by_name["Service thermo-1"]["state_topic"]
        assert (ha.get(service_state) or b"").startswith(b"active")
        event = json.loads(ha.get(by_name["Alerts"]["state_topic"]) or b"{}")
        assert event["event_type"] == "new-edge" and event["id"] == alert["id"]
        assert (event["src"], event["dst"]) == ("thermo-1", "home/kitchen/new")

        (approve_topic,) = [t for t in buttons() if t.endswith(approve)]
        ha.press(buttons()[approve_topic]["command_topic"])

        def approved() -> bool:
            rows = proxy.cli_json("alerts")
            return any(r["id"] == alert["id"] and r["state"] == "approved" for r in rows)

        wait_until(approved, TIMEOUT, 0.2, "the alert to be approved")
        audit = proxy.cli_json("decisions")
        assert any(d["alert"] == alert["id"] and d["by"] == "homeassistant" for d in audit)
        wait_until(lambda: ha.get(approve_topic) == b"", TIMEOUT, 0.1, "the button cleared")
        deny_topic = approve_topic.replace("_approve/", "_deny/")
        wait_until(lambda: ha.get(deny_topic) == b"", TIMEOUT, 0.1, "the deny button cleared")
        wait_until(lambda: ha.get(pending_state) == b"0", TIMEOUT, 0.1, "pending = 0")
        wait_until(lambda: ha.get(anomaly_state) == b"OFF", TIMEOUT, 0.1, "anomaly off")

        # the node's own client is no service, and its topics are no edges
        for edge in proxy.cli_json("edges"):
            for name in (edge["src"], edge["dst"]):
                assert not name.startswith(("commgraph", PREFIX)), edge
        thermo.disconnect()
        thermo.loop_stop()
        proxy.stop()
        wait_until(lambda: ha.get(availability) == b"offline", TIMEOUT, 0.1, "offline")
        rows = proxy.cli_json("alerts")
        assert [r["state"] for r in rows if r["id"] == alert["id"]] == ["approved"]  # durable
    finally:
        ha.close()


def test_command_topics_parse_back_and_nothing_else_does() -> None:
    node = "node/+#a"
    for action in (Action.APPROVE, Action.DENY):
        assert parse_command(node, command_topic(node, 42, action)) == (42, action)
    base = command_topic(node, 42, Action.APPROVE).rsplit("/", 2)[0]
    for bad in (
        f"{base}/x/approve",
        f"{base}/42/mode",
        f"{base}/42",
        "x/" + base,
        f"{base}/-1/deny",
    ):
        assert parse_command(node, bad) is None
    assert parse_command("other", command_topic(node, 1, Action.APPROVE)) is None


def test_device_controlled_names_stay_data() -> None:
    hostile = "evil/#+{{ states('x') }}"
    view = NodeView(pending=(7,), services=(ServiceView(hostile, "active", "monitor"),))
    entities = node_entities(PREFIX, hostile, view, "1")
    for topic, (config, state_topic, _) in entities.items():
        assert "+" not in topic and "#" not in topic and len(topic.split("/")) == 5
        assert not [key for key in config if key.endswith("_template")]  # names never templated
        assert "#" not in state_topic and "+" not in state_topic
    assert ID.fullmatch(object_id(hostile))
    assert object_id("a/b") != object_id("a_b")
    for topic, config in alert_buttons(PREFIX, hostile, 7, "1").items():
        assert validate(topic, config) == "button"


def test_discovery_needs_a_broker(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"homeassistant\.broker"):
        parse_config({"homeassistant": {"discovery": True}}, "site.toml", tmp_path)
    with pytest.raises(ConfigError, match=r"homeassistant\.prefix"):
        parse_config({"homeassistant": {"prefix": "a/#"}}, "site.toml", tmp_path)
    config = parse_config(
        {"homeassistant": {"discovery": True, "broker": "127.0.0.1:1"}}, "site.toml", tmp_path
    )
    assert config.homeassistant.discovery and config.homeassistant.prefix == PREFIX
