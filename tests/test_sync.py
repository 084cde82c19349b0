"""Signed models shared by every node of a site: real ``commgraph run`` daemons (separate
processes) on real Mosquitto brokers, real paho clients as devices.

Every wait has a deadline; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from functools import reduce
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.client import CallbackAPIVersion

from commgraph.model import (
    ModelEdge,
    ServiceModel,
    canonical_json,
    merge,
    parse_model,
    read_envelope,
    sign_model,
)
from commgraph.signing import generate_keypair, load_private
from commgraph.store import Store
from commgraph.sync import model_topic, parse_model_topic
from conftest import (
    COMMGRAPH,
    HOST,
    Broker,
    Proxy,
    launch_mosquitto,
    stop_mosquitto,
    wait_until,
)

TIMEOUT = 20.0
THERMO = {"match": "client_id", "pattern": "^(?P<service>thermo)-(?P<instance>.+)$"}


# -- topics (pure) -----------------------------------------------------------------------------


def test_model_topics_escape_names_and_parse_back() -> None:
    assert model_topic("thermo", "node-a") == "commgraph/v1/models/thermo/node-a"
    odd = model_topic("a/b+c#d%e", "n/1")
    assert odd.count("/") == 4 and "+" not in odd and "#" not in odd
    assert parse_model_topic(odd) == ("a/b+c#d%e", "n/1")
    assert parse_model_topic("commgraph/v1/models/x") is None
    assert parse_model_topic("other/v1/models/x/y") is None
    assert parse_model_topic("commgraph/v1/models/x/y/z") is None
    with pytest.raises(ValueError):
        model_topic("", "n")


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    done = subprocess.run(
        [str(COMMGRAPH), "keygen", "--out", str(tmp_path / "keys"), "--name", "site"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return tmp_path / "keys" / "site.key", tmp_path / "keys" / "site.pub"


StartNode = Callable[..., Proxy]


@pytest.fixture
def start_node(
    start_proxy: Callable[..., Proxy], keys: tuple[Path, Path], mosquitto: Broker
) -> StartNode:
    """``start_node("node-b", broker=..., db=...)``: a daemon in protect mode, learning 2 s,
    proxying to ``broker`` and syncing models over it, with the site keys."""

    def start(name: str, broker: Broker | None = None, db: Path | None = None) -> Proxy:
        broker = broker or mosquitto
        node: dict[str, Any] = {"name": name}
        if db is not None:
            node["db"] = str(db)
        return start_proxy(
            mode="protect",
            learning="2s",
            node=node,
            mqtt={"upstream": f"{broker.host}:{broker.port}"},
            sync={"broker": f"{broker.host}:{broker.port}"},
            keys={"private": str(keys[0]), "trusted": [str(keys[1])]},
            identity={"rules": [THERMO]},
        )

    return start


class Device:
    """A paho client (a thermostat instance) whose publishes wait for their PUBACK."""

    def __init__(self, port: int, client_id: str) -> None:
        self.client_id = client_id
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.connected = threading.Event()
        self.paho.on_connect = lambda *_: self.connected.set()
        self.paho.connect(HOST, port, keepalive=30)
        self.paho.loop_start()
        assert self.connected.wait(TIMEOUT), f"{client_id}: no CONNACK"

    def publish(self, topic: str, payload: bytes = b"21.5") -> None:
        info = self.paho.publish(topic, payload, qos=1)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), f"{self.client_id}: no PUBACK for {topic}"

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.paho.on_subscribe = lambda *_: done.set()
        self.paho.subscribe(topic, qos=1)
        assert done.wait(TIMEOUT), f"{self.client_id}: no SUBACK for {topic}"

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


class Listener:
    """Subscribed to everything on a broker directly: what the broker really delivered."""

    def __init__(self, broker: Broker, topic: str = "home/#") -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="listener")
        ready = threading.Event()
        self.paho.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self.paho.on_subscribe = lambda *_: ready.set()
        self.paho.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.payload))
        self.paho.connect(broker.host, broker.port, keepalive=30)
        self.paho.loop_start()
        assert ready.wait(TIMEOUT), "listener: no SUBACK"

    def until(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Everything received up to and including (topic, payload)."""
        seen: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + TIMEOUT
        while (topic, payload) not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"listener: {topic} {payload!r} never arrived; got {seen}"
            try:
                seen.append(self.messages.get(timeout=left))
            except queue.Empty:
                continue
        return seen

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


@pytest.fixture
def devices() -> Iterator[Callable[[int, str], Device]]:
    made: list[Device] = []

    def make(port: int, client_id: str) -> Device:
        device = Device(port, client_id)
        made.append(device)
        return device

    yield make
    for device in made:
        device.close()


def kept(node: Proxy, service: str = "thermo") -> dict[str, ServiceModel]:
    """The models of ``service`` a node keeps, by issuing node (documents read, not checked)."""
    with Store(node.db) as store:
        rows = store.models(service)
    return {row["node"]: parse_model(read_envelope(row["envelope"]).document) for row in rows}


def site_model(node: Proxy, service: str = "thermo") -> tuple[ModelEdge, ...] | None:
    """What the node knows of the service: the join of every model it keeps."""
    models = list(kept(node, service).values())
    return reduce(merge, models).edges if models else None


def edge_of(models: dict[str, ServiceModel], issuer: str, peer: str) -> ModelEdge | None:
    model = models.get(issuer)
    return None if model is None else model.edge("publish", peer)


def pending_alerts(node: Proxy) -> list[dict[str, Any]]:
    return node.cli_json("alerts", "--state", "pending")


def service_row(node: Proxy, name: str = "thermo") -> dict[str, Any] | None:
    return next((row for row in node.cli_json("services") if row["name"] == name), None)


def learn_thermo_on(node: Proxy, devices: Callable[[int, str], Device]) -> Device:
    """thermo-kitchen teaches ``node`` the thermostat type; returns once its model is out."""
    kitchen = devices(node.port, "thermo-kitchen")
    kitchen.subscribe("home/kitchen/cmd")
    for _ in range(3):
        kitchen.publish("home/kitchen/temp")
    wait_until(
        lambda: "node-a" in kept(node) or None, TIMEOUT, 0.2, "node-a to publish thermo's model"
    )
    return kitchen


# -- three nodes, one broker -------------------------------------------------------------------


def test_learned_on_a_approved_on_b_enforced_at_once_on_c(
    start_node: StartNode, mosquitto: Broker, devices: Callable[[int, str], Device]
) -> None:
    a, b, c = start_node("node-a"), start_node("node-b"), start_node("node-c")
    learn_thermo_on(a, devices)
    learned = kept(a)["node-a"]
    assert [(e.relation, e.peer, e.label) for e in learned.edges] == [
        ("publish", "home/+/temp", "learned"),
        ("subscribe", "home/+/cmd", "learned"),
    ]
    for other in (b, c):
        wait_until(lambda o=other: "node-a" in kept(o), TIMEOUT, 0.2, "the model to reach B, C")

    # On B the type is enforced at once: the known topic passes, a new one is an alert.
    hall = devices(b.port, "thermo-hall")
    hall.publish("home/hall/temp")
    hall.publish("home/hall/humidity")
    alerts = wait_until(lambda: pending_alerts(b), TIMEOUT, 0.2, "B's alert")
    assert [(x["src"], x["relation"], x["dst"]) for x in alerts] == [
        ("thermo", "publish", "home/hall/humidity")
    ]
    row = service_row(b)
    assert row is not None and (row["phase"], row["model_from"]) == ("active", "node-a")
    approved = b.cli("approve", str(alerts[0]["id"]), "--by", "owner@phone")
    assert approved.returncode == 0, approved.stderr

    def approval_on(node: Proxy) -> ModelEdge | None:
        found = edge_of(kept(node), "node-b", "home/+/humidity")
        return found if found is not None and found.label == "approved" else None

    for other in (a, c):
        edge = wait_until(lambda o=other: approval_on(o), TIMEOUT, 0.2, "B's approval")
        assert edge.decided_by == "owner@phone"

    # A new instance on C: no learning phase, A's learning and B's approval in effect, and a
    # behaviour change is an alert (and blocked: C protects).
    listener = Listener(mosquitto)
    bath = devices(c.port, "thermo-bath")
    for topic in ("home/bath/temp", "home/bath/humidity", "home/bath/evil"):
        bath.publish(topic, b"x")
    bath.publish("home/bath/temp", b"fence")
    delivered = [topic for topic, _ in listener.until("home/bath/temp", b"fence")]
    listener.close()
    assert delivered == ["home/bath/temp", "home/bath/humidity", "home/bath/temp"]
    alerts_c = pending_alerts(c)
    assert [(x["relation"], x["dst"]) for x in alerts_c] == [("publish", "home/bath/evil")]
    row = service_row(c)
    assert row is not None and row["phase"] == "active"
    assert row["model_from"] in ("node-a", "node-b")
    assert row["learning_started_at"] == row["learned_at"]  # never learned on C
    for node in (a, b, c):
        node.stop()


# -- a partition -------------------------------------------------------------------------------


def test_a_node_offline_while_others_decide_converges_when_back(
    start_node: StartNode, devices: Callable[[int, str], Device]
) -> None:
    a, b, c = start_node("node-a"), start_node("node-b"), start_node("node-c")
    kitchen = learn_thermo_on(a, devices)
    for other in (b, c):
        wait_until(lambda o=other: "node-a" in kept(o), TIMEOUT, 0.2, "the model to reach B, C")
    devices(c.port, "thermo-bath").publish("home/bath/temp")
    kitchen.publish("home/kitchen/window")  # an alert on A
    devices(b.port, "thermo-hall").publish("home/hall/door")  # an alert on B
    alert_a = wait_until(lambda: pending_alerts(a), TIMEOUT, 0.2, "A's alert")[0]["id"]
    alert_b = wait_until(lambda: pending_alerts(b), TIMEOUT, 0.2, "B's alert")[0]["id"]
    c.stop()

    # The owner decides on A and B at the same moment, on different edges.
    both = [
        subprocess.Popen(
            [str(COMMGRAPH), "--db", str(node.db), action, str(alert), "--by", "owner"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for node, action, alert in ((a, "approve", alert_a), (b, "deny", alert_b))
    ]
    for process in both:
        assert process.wait(timeout=30) == 0, process.stderr.read() if process.stderr else ""

    def decided(node: Proxy) -> bool:
        edges = site_model(node) or ()
        labels = {(e.peer, e.label) for e in edges}
        return {("home/+/window", "approved"), ("home/+/door", "denied")} <= labels

    for node in (a, b):
        wait_until(lambda n=node: decided(n), TIMEOUT, 0.2, "both decisions on A and B")

    c2 = start_node("node-c", db=c.db)
    wait_until(lambda: decided(c2), TIMEOUT, 0.2, "C to catch up when back")
    # Everyone ends with the same model, and C publishes the same view as its own.
    wait_until(
        lambda: site_model(a) == site_model(b) == site_model(c2), TIMEOUT, 0.2, "convergence"
    )
    wait_until(
        lambda: "node-c" in kept(c2) and kept(c2)["node-c"].edges == site_model(a),
        TIMEOUT,
        0.2,
        "C's own view to match",
    )
    # C enforces what was decided while it was away.
    bath = devices(c2.port, "thermo-bath")
    bath.publish("home/bath/window")
    bath.publish("home/bath/door")
    edges = {row["dst"]: row["label"] for row in c2.cli_json("edges", "--service", "thermo")}
    assert (edges["home/bath/window"], edges["home/bath/door"]) == ("approved", "denied")
    assert pending_alerts(c2) == []
    for node in (a, b, c2):
        node.stop()


# -- bridged brokers ---------------------------------------------------------------------------


def test_models_cross_a_mosquitto_bridge(
    tmp_path: Path, start_node: StartNode, mosquitto: Broker, devices: Callable[[int, str], Device]
) -> None:
    bridge = (
        "connection to-first\n"
        f"address {mosquitto.host}:{mosquitto.port}\n"
        "topic commgraph/v1/models/# both 1\n"
        "cleansession true\n"
        "restart_timeout 1\n"
    )
    second = launch_mosquitto(tmp_path, name="second", extra=bridge)
    try:
        a = start_node("node-a")
        b = start_node("node-b", broker=second)
        learn_thermo_on(a, devices)
        wait_until(lambda: "node-a" in kept(b), TIMEOUT, 0.2, "A's model across the bridge")
        hall = devices(b.port, "thermo-hall")
        hall.publish("home/hall/temp")
        hall.publish("home/hall/smoke")
        alerts = wait_until(lambda: pending_alerts(b), TIMEOUT, 0.2, "B's alert")
        assert [x["dst"] for x in alerts] == ["home/hall/smoke"]
        assert b.cli("deny", str(alerts[0]["id"])).returncode == 0
        found = wait_until(
            lambda: edge_of(kept(a), "node-b", "home/+/smoke"), TIMEOUT, 0.2, "B's denial on A"
        )
        assert found.label == "denied"
        a.stop()
        b.stop()
    finally:
        stop_mosquitto(second)


# -- security ----------------------------------------------------------------------------------


def test_unsigned_tampered_and_unknown_key_models_are_refused_and_audited(
    start_node: StartNode, mosquitto: Broker, keys: tuple[Path, Path]
) -> None:
    a = start_node("node-a")
    model = ServiceModel(
        service="thermo",
        version=1,
        node="mallory",
        issued_at=time.time(),
        edges=(ModelEdge(relation="publish", peer="home/#", direction="out", label="learned"),),
    )
    signed = sign_model(model, load_private(keys[0]))
    flip = signed.index(b"home/#") + 1
    tampered = signed[:flip] + bytes([signed[flip] ^ 0x01]) + signed[flip + 1 :]
    stranger = sign_model(model, generate_keypair()[0])
    bad = {
        "mallory-1": tampered,
        "mallory-2": stranger,
        "mallory-3": canonical_json(model),
        "mallory-4": b"{not json",
        "mallory-5": signed,  # a good signature, on another node's topic
    }
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="mallory")
    sender.connect(mosquitto.host, mosquitto.port)
    sender.loop_start()
    try:
        for node, payload in bad.items():
            sender.publish(
                model_topic("thermo", node), payload, qos=1, retain=True
            ).wait_for_publish(TIMEOUT)

        def refusals() -> list[dict[str, Any]]:
            rows = a.cli_json("decisions")
            return [row for row in rows if row["action"] == "model-rejected"]

        rows = wait_until(lambda: len(refusals()) >= 5 and refusals(), TIMEOUT, 0.2, "audits")
        assert sorted(row["detail"] for row in rows) == [
            "malformed; from node mallory-4",
            "malformed; from node mallory-5",
            "tampered; from node mallory-1",
            "unknown-key; from node mallory-2",
            "unsigned; from node mallory-3",
        ]
        assert all(row["service"] == "thermo" and row["by"] == "sync" for row in rows)
        assert kept(a) == {}  # nothing of them is kept or merged
        # The control: the same model, properly signed, is taken in.
        sender.publish(model_topic("thermo", "mallory"), signed, qos=1, retain=True)
        wait_until(lambda: "mallory" in kept(a), TIMEOUT, 0.2, "the good model")
        assert len(refusals()) == 5
        assert list(kept(a)) == ["mallory"]
    finally:
        sender.disconnect()
        sender.loop_stop()
    a.stop()
