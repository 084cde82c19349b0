"""Which MQTT packet is which relationship: the one mapping the proxy and the pcap decoder share.

* a PUBLISH from a client: ``client -> topic publish``, sized by its payload;
* a PUBLISH from the broker: ``topic -> client deliver``, sized by its payload;
* a SUBSCRIBE: ``client -> filter subscribe`` per filter, in the packet's order, unsized;
* a CONNECT with a will: ``client -> will topic publish``, unsized (the will is a message
  the client may send);
* every other packet: nothing.

``client`` is the address the caller named the connection by (the proxy's identity binding,
the pcap decoder's client id). The topics are as the packet carries them (a topic alias is
already resolved by the decoder); checking that they are usable names is the caller's business.
"""

from __future__ import annotations

from typing import Final

from commgraph.adapters.mqtt.codec import Connect, Packet, Publish, Subscribe

__all__ = ["DELIVER", "PUBLISH", "SUBSCRIBE", "Edge", "edges", "publish_edge"]

PUBLISH: Final = "publish"
SUBSCRIBE: Final = "subscribe"
DELIVER: Final = "deliver"

# (src, dst, relation, size): an event without its time
Edge = tuple[str, str, str, "int | None"]


def edges(packet: Packet, client: str, *, from_client: bool) -> list[Edge]:
    """The relationships ``packet`` shows, in order (see the module docstring)."""
    if isinstance(packet, Publish):
        return [publish_edge(packet, client, from_client)]
    if isinstance(packet, Subscribe):
        return [(client, topic_filter, SUBSCRIBE, None) for topic_filter, _ in packet.filters]
    if isinstance(packet, Connect) and packet.will_topic is not None:
        return [(client, packet.will_topic, PUBLISH, None)]
    return []


def publish_edge(packet: Publish, client: str, from_client: bool) -> Edge:
    """The one relationship of a PUBLISH (the proxy's hot path takes it without a list)."""
    if from_client:
        return (client, packet.topic, PUBLISH, packet.payload_size)
    return (packet.topic, client, DELIVER, packet.payload_size)
