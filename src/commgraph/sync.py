"""Model exchange over MQTT: every node's signed models, retained on the site broker.

Each node publishes the signed model of each of its services as a retained message on
``commgraph/v1/models/<service>/<node>`` (QoS 1), so no node overwrites another's, and
subscribes to all of them. A node that was offline catches up from the retained messages when
it (re)connects; it publishes its own models again on every connect, in case the broker lost
them. Any MQTT broker does, a clustered or bridged one for a large site.

This module only moves bytes: what arrives is handed to the ``receive`` callback on the
event loop, which checks signatures and merges (``commgraph.model``); a failing callback
or a lost broker never stops observation. paho-mqtt runs its network loop in its own thread
and reconnects by itself; every callback is passed to the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from commgraph.config import Address

__all__ = ["PREFIX", "ModelSync", "SyncStats", "model_topic", "parse_model_topic"]

log = logging.getLogger("commgraph.sync")

PREFIX = "commgraph/v1/models"
_SAFE = "-_.~@:=,;!$&'()*"  # kept as is in a topic level; '/', '+', '#', '%' are escaped

Receive = Callable[[str, str, bytes], None]


def model_topic(service: str, node: str) -> str:
    """The topic of ``node``'s model of ``service`` (each name one escaped level)."""
    return f"{PREFIX}/{_level(service)}/{_level(node)}"


def parse_model_topic(topic: str) -> tuple[str, str] | None:
    """``(service, node)`` of a model topic, or None if the topic is not one."""
    head, _, rest = topic.partition(f"{PREFIX}/")
    if head or not rest:
        return None
    parts = rest.split("/")
    if len(parts) != 2 or not all(parts):
        return None
    service, node = (unquote(part, errors="strict") for part in parts)
    return service, node


def _level(name: str) -> str:
    if not name:
        raise ValueError("a service or node name must not be empty")
    return quote(name, safe=_SAFE)


@dataclass(slots=True)
class SyncStats:
    connects: int = 0
    published: int = 0
    received: int = 0
    callback_errors: int = 0


class ModelSync:
    """One node's link to the site broker for models.

    ``receive(service, node, payload)`` is called on the event loop for every retained or
    live model message (including this node's own, which the caller may ignore). Call
    :meth:`publish` from the event loop; it is sent at once when connected and again on
    every reconnect.
    """

    def __init__(self, broker: Address, node: str, receive: Receive) -> None:
        self.broker = broker
        self.node = node
        self.receive = receive
        self.stats = SyncStats()
        self.connected = asyncio.Event()
        self._own: dict[str, bytes] = {}  # service -> our latest envelope
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"commgraph-sync-{node}"[:64],
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    async def start(self) -> None:
        """Start connecting (in the background: an absent broker is retried, not fatal)."""
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=30)
        self._client.loop_start()
        log.info("model sync with broker %s as node %s", self.broker, self.node)

    def publish(self, service: str, envelope: bytes) -> None:
        """Publish (retained) this node's signed model of ``service``."""
        with self._lock:
            self._own[service] = envelope
        if self.connected.is_set():
            self._send(service, envelope)

    def _send(self, service: str, envelope: bytes) -> None:
        info = self._client.publish(model_topic(service, self.node), envelope, qos=1, retain=True)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self.stats.published += 1
        else:  # not connected after all: on_connect sends it again
            log.debug("model of %s not sent now (%s)", service, mqtt.error_string(info.rc))

    async def close(self) -> None:
        """Disconnect and stop the network thread."""
        await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # -- paho's thread ----------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.warning("site broker %s refused model sync: %s", self.broker, reason)
            return
        self.stats.connects += 1
        client.subscribe(f"{PREFIX}/+/+", qos=1)
        with self._lock:
            own = list(self._own.items())
        for service, envelope in own:
            self._send(service, envelope)
        self._call(self.connected.set)
        log.info("model sync connected to %s (%d models of ours sent)", self.broker, len(own))

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._call(self.connected.clear)
        if reason.is_failure:
            log.warning("model sync lost the site broker %s (%s); retrying", self.broker, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            parsed = parse_model_topic(message.topic)
        except UnicodeDecodeError:
            parsed = None
        if parsed is None:
            log.warning("ignoring a message on %r: not a model topic", message.topic)
            return
        if not message.payload:  # a cleared retained message
            return
        self.stats.received += 1
        self._call(self._deliver, parsed[0], parsed[1], bytes(message.payload))

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: shutting down
                loop.call_soon_threadsafe(callback, *args)

    def _deliver(self, service: str, node: str, payload: bytes) -> None:
        try:
            self.receive(service, node, payload)
        except Exception:  # a failing receiver never stops the sync (or observation)
            self.stats.callback_errors += 1
            log.exception("handling the model of %s from node %s failed", service, node)
