"""The packet -> event mapping that the MQTT relay and the pcap decoder share."""

from __future__ import annotations

from commgraph.adapters.mqtt.codec import (
    Connect,
    MQTTDecoder,
    Publish,
    encode_connect,
    encode_pingreq,
    encode_publish,
    encode_subscribe,
)
from commgraph.adapters.mqtt.events import edges


def test_each_packet_kind_maps_to_its_edges() -> None:
    """What a decoder makes of real bytes, mapped as the relay and the pcap decoder map it."""
    decoder = MQTTDecoder(from_client=True)
    (connect,) = decoder.feed(encode_connect("lock-7", will_topic="w", will_payload=b"x"))
    assert isinstance(connect, Connect)
    assert edges(connect, "lock-7", from_client=True) == [("lock-7", "w", "publish", None)]
    (subscribe, publish) = decoder.feed(
        encode_subscribe(1, [("a/+", 0), ("b", 1)], v5=False)
        + encode_publish("c", b"123", v5=False)
    )
    assert isinstance(publish, Publish)
    assert edges(subscribe, "lock-7", from_client=True) == [
        ("lock-7", "a/+", "subscribe", None),
        ("lock-7", "b", "subscribe", None),
    ]
    assert edges(publish, "lock-7", from_client=True) == [("lock-7", "c", "publish", 3)]
    assert edges(publish, "lock-7", from_client=False) == [("c", "lock-7", "deliver", 3)]
    (ping,) = decoder.feed(encode_pingreq())
    assert edges(ping, "lock-7", from_client=True) == []
