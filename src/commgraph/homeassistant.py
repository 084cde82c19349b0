"""Home Assistant through MQTT discovery: the node as a device with sensors and buttons.

With ``[homeassistant] discovery = true`` the node publishes retained discovery configs on
``<prefix>/<component>/<node_id>/<object_id>/config`` (Home Assistant's MQTT discovery
schema: ``device``, ``unique_id``, ``availability`` with the node's last will):

- a sensor "pending alerts", a sensor per service (its phase and mode) and a binary sensor
  "anomaly" (on while an alert is pending);
- an event entity carrying each new alert (its ``event_type`` is the alert's kind), so
  automations can react;
- per pending alert, two buttons, Approve and Deny, whose command topics the node
  subscribes to; a press decides the alert ``by homeassistant``. A decided alert's button
  configs are cleared (empty retained payloads), however it was decided.

The node connects to the broker directly (not through its proxy), so its own subscriptions
carry no edges into the graph. Device-controlled names only ever appear as escaped topic
levels and as JSON string values, never inside a Home Assistant template.

The building of topics and payloads (:func:`node_entities`, :func:`alert_buttons`,
:func:`parse_command`) is pure; :class:`HomeAssistant` is the hook that moves them. paho
runs its network loop in its own thread; presses are handed to the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from commgraph.alerts import Action, AlertKind
from commgraph.config import Address
from commgraph.errors import CommgraphError

__all__ = [
    "BASE",
    "HomeAssistant",
    "NodeView",
    "ServiceView",
    "alert_buttons",
    "node_entities",
    "parse_command",
    "view_of",
]

log = logging.getLogger("commgraph.homeassistant")

BASE = "commgraph/v1/ha"  # the node's own state and command topics live under this
ONLINE, OFFLINE = "online", "offline"
PRESS = "PRESS"  # Home Assistant's default payload_press
BY = "homeassistant"
_ID_SAFE = re.compile(r"[^a-zA-Z0-9_-]")

Decide = Callable[..., Any]  # Daemon.decide(alert_id, action, *, by, reason)


@dataclass(frozen=True, slots=True)
class ServiceView:
    name: str
    phase: str
    mode: str


@dataclass(frozen=True, slots=True)
class NodeView:
    """What Home Assistant shows of a node: its pending alert ids and its services."""

    pending: tuple[int, ...]
    services: tuple[ServiceView, ...]


def object_id(name: str) -> str:
    """A discovery ``object_id``/``node_id`` for any name: only ``[a-zA-Z0-9_-]``, with a
    short digest so that names differing only in other characters stay apart."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{_ID_SAFE.sub('_', name)[:48]}_{digest}"


def _level(name: str) -> str:
    return quote(name, safe="-_.~@:=,;!$&'()*")  # '/', '+', '#', '%' escaped: one level


def base_topic(node: str) -> str:
    return f"{BASE}/{_level(node)}"


def availability_topic(node: str) -> str:
    return f"{base_topic(node)}/availability"


def command_topic(node: str, alert_id: int, action: Action) -> str:
    return f"{base_topic(node)}/alert/{alert_id}/{action.value}"


def parse_command(node: str, topic: str) -> tuple[int, Action] | None:
    """``(alert id, approve or deny)`` of one of this node's command topics, or None."""
    head, _, rest = topic.partition(f"{base_topic(node)}/alert/")
    if head or not rest:
        return None
    number, _, verb = rest.partition("/")
    if not number.isdigit() or len(number) > 18 or verb not in (Action.APPROVE, Action.DENY):
        return None
    return int(number), Action(verb)


def _device(node: str, version: str) -> dict[str, Any]:
    return {
        "identifiers": [f"commgraph_{object_id(node)}"],
        "name": f"commgraph {node}",
        "manufacturer": "commgraph",
        "model": "commgraph node",
        "sw_version": version,
    }


def _common(node: str, version: str, unique: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "unique_id": f"commgraph_{object_id(node)}_{unique}",
        "object_id": f"commgraph_{object_id(node)}_{unique}",
        "device": _device(node, version),
        "availability": [
            {
                "topic": availability_topic(node),
                "payload_available": ONLINE,
                "payload_not_available": OFFLINE,
            }
        ],
        "availability_mode": "latest",
    }


def _config_topic(prefix: str, component: str, node: str, unique: str) -> str:
    return f"{prefix}/{component}/commgraph_{object_id(node)}/{unique}/config"


def node_entities(
    prefix: str, node: str, view: NodeView, version: str
) -> dict[str, tuple[dict[str, Any], str, str]]:
    """``config topic -> (discovery config, state topic, state payload)`` of the node's
    sensors, binary sensor and (without a state: empty) its event entity."""
    base = base_topic(node)
    entities: dict[str, tuple[dict[str, Any], str, str]] = {}
    pending = {
        **_common(node, version, "pending", "Pending alerts"),
        "state_topic": f"{base}/pending",
        "state_class": "measurement",
        "icon": "mdi:bell-alert",
    }
    entities[_config_topic(prefix, "sensor", node, "pending")] = (
        pending,
        f"{base}/pending",
        str(len(view.pending)),
    )
    anomaly = {
        **_common(node, version, "anomaly", "Anomaly"),
        "state_topic": f"{base}/anomaly",
        "payload_on": "ON",
        "payload_off": "OFF",
        "device_class": "problem",
    }
    entities[_config_topic(prefix, "binary_sensor", node, "anomaly")] = (
        anomaly,
        f"{base}/anomaly",
        "ON" if view.pending else "OFF",
    )
    event = {
        **_common(node, version, "alerts", "Alerts"),
        "state_topic": f"{base}/alerts",
        "event_types": [kind.value for kind in AlertKind],
    }
    entities[_config_topic(prefix, "event", node, "alerts")] = (event, "", "")
    for service in view.services:
        unique = f"service_{object_id(service.name)}"
        state = f"{base}/service/{_level(service.name)}"
        config = {
            **_common(node, version, unique, f"Service {service.name}"),
            "state_topic": state,
            "icon": "mdi:graph",
        }
        entities[_config_topic(prefix, "sensor", node, unique)] = (
            config,
            state,
            f"{service.phase} ({service.mode})",
        )
    return entities


def alert_buttons(prefix: str, node: str, alert_id: int, version: str) -> dict[str, dict[str, Any]]:
    """``config topic -> discovery config`` of the Approve and Deny buttons of one alert."""
    buttons: dict[str, dict[str, Any]] = {}
    for action, label in ((Action.APPROVE, "Approve"), (Action.DENY, "Deny")):
        unique = f"alert_{alert_id}_{action.value}"
        config = {
            **_common(node, version, unique, f"{label} alert {alert_id}"),
            "command_topic": command_topic(node, alert_id, action),
            "payload_press": PRESS,
            "retain": False,
            "icon": "mdi:check" if action is Action.APPROVE else "mdi:cancel",
        }
        buttons[_config_topic(prefix, "button", node, unique)] = config
    return buttons


def view_of(engine: Any) -> NodeView:
    """The :class:`NodeView` of an engine (read on the event loop, which owns it)."""
    pending = tuple(sorted(alert.id for alert in engine.alerts.pending()))
    phases = engine.phases
    services = tuple(
        ServiceView(state.service, str(state.phase), str(phases.mode(vid)))
        for vid, state in sorted(phases.states.items())
    )
    return NodeView(pending=pending, services=services)


@dataclass(slots=True)
class HomeAssistantStats:
    connects: int = 0
    published: int = 0
    presses: int = 0
    refused: int = 0  # presses that named no pending alert, or were retained


class HomeAssistant:
    """The hook: discovery configs and states out, button presses in.

    ``view()`` gives the node's current :class:`NodeView`; ``decide(alert_id, action, by=,
    reason=)`` decides an alert durably. Both are called on the event loop only.
    """

    def __init__(
        self,
        broker: Address,
        node: str,
        view: Callable[[], NodeView],
        decide: Decide,
        *,
        prefix: str = "homeassistant",
        version: str = "0",
        interval: float = 1.0,
    ) -> None:
        self.broker, self.node, self.prefix, self.version = broker, node, prefix, version
        self.view, self.decide, self.interval = view, decide, interval
        self.stats = HomeAssistantStats()
        self.connected = asyncio.Event()
        self._published: dict[str, bytes] = {}  # topic -> retained payload we hold there
        self._buttons: set[int] = set()  # alerts whose buttons are published
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"commgraph-ha-{node}"[:64],
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        self._client.will_set(availability_topic(node), OFFLINE, qos=1, retain=True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # -- the hook --------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=30)
        self._client.loop_start()
        self._task = self._loop.create_task(self._refreshing())
        log.info("Home Assistant discovery on %s under %s/", self.broker, self.prefix)

    def on_alert(self, notice: Any) -> None:
        """A new alert: told to Home Assistant's event entity, its buttons published."""
        alert_id = getattr(notice, "id", None)
        if alert_id is None:  # a mode notice: nothing for Home Assistant to press
            return
        payload = {
            "event_type": notice.kind,
            "id": notice.id,
            "kind": notice.kind,
            "src": notice.src,
            "dst": notice.dst,
            "relation": notice.relation,
            "node": notice.node,
            "at": notice.at,
        }
        self._publish(f"{base_topic(self.node)}/alerts", json.dumps(payload).encode(), False)
        self.refresh()

    def on_decision(self, decision: Any) -> None:
        self.refresh()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        info = self._client.publish(availability_topic(self.node), OFFLINE, qos=1, retain=True)
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(2.0)
        self._client.disconnect()
        self._client.loop_stop()

    # -- publishing --------------------------------------------------------------------------

    async def _refreshing(self) -> None:
        while True:
            await self.connected.wait()
            try:
                self.refresh()
            except Exception:  # a failing refresh never stops the node; tried again next time
                log.exception("Home Assistant: refreshing the entities failed")
            await asyncio.sleep(self.interval)

    def refresh(self) -> None:
        """Publish what changed since the last time: configs, states, buttons added for new
        pending alerts and cleared for decided ones."""
        if not self.connected.is_set():
            return
        view = self.view()
        for topic, (config, state_topic, state) in node_entities(
            self.prefix, self.node, view, self.version
        ).items():
            self._retain(topic, json.dumps(config, sort_keys=True).encode())
            if state_topic:
                self._retain(state_topic, state.encode())
        pending = set(view.pending)
        for alert_id in sorted(pending - self._buttons):
            for topic, config in alert_buttons(
                self.prefix, self.node, alert_id, self.version
            ).items():
                self._retain(topic, json.dumps(config, sort_keys=True).encode())
            self._buttons.add(alert_id)
        for alert_id in sorted(self._buttons - pending):
            for topic in alert_buttons(self.prefix, self.node, alert_id, self.version):
                self._retain(topic, b"")  # an empty retained config removes the entity
            self._buttons.discard(alert_id)

    def _retain(self, topic: str, payload: bytes) -> None:
        if self._published.get(topic) == payload:
            return
        if self._publish(topic, payload, True):
            if payload:
                self._published[topic] = payload
            else:
                self._published.pop(topic, None)

    def _publish(self, topic: str, payload: bytes, retain: bool) -> bool:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.debug("Home Assistant: %s not sent now (%s)", topic, mqtt.error_string(info.rc))
            return False
        self.stats.published += 1
        return True

    # -- presses -------------------------------------------------------------------------

    def pressed(self, alert_id: int, action: Action) -> None:
        """A button was pressed in Home Assistant: decide the alert (on the event loop)."""
        self.stats.presses += 1
        try:
            self.decide(alert_id, action, by=BY, reason="pressed in Home Assistant")
        except CommgraphError as exc:  # decided meanwhile, or unknown: the node's state wins
            self.stats.refused += 1
            log.warning("Home Assistant pressed %s on alert %d: %s", action.value, alert_id, exc)
        self.refresh()

    # -- paho's thread -------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.warning("broker %s refused Home Assistant discovery: %s", self.broker, reason)
            return
        self.stats.connects += 1
        client.subscribe(f"{base_topic(self.node)}/alert/+/+", qos=1)
        client.publish(availability_topic(self.node), ONLINE, qos=1, retain=True)
        self._call(self._connected)

    def _connected(self) -> None:
        self._published.clear()  # the broker may have lost them: everything again
        self.connected.set()
        self.refresh()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._call(self.connected.clear)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        command = parse_command(self.node, message.topic)
        if command is None or message.retain or bytes(message.payload) != PRESS.encode():
            self.stats.refused += 1  # a retained press would decide again at every connect
            return
        self._call(self.pressed, *command)

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: shutting down
                loop.call_soon_threadsafe(callback, *args)
