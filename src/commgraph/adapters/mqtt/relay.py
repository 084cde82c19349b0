"""The MQTT proxy's decisions for one client connection, without I/O: bytes in, bytes out.

A :class:`Relay` is fed what the client sent (:meth:`Relay.client_data`) and what the broker
sent (:meth:`Relay.broker_data`), each with the time of the read, and returns an
:class:`Output`: the bytes for each side, the events it asked verdicts for, the protocol
signals, and whether to close. The asyncio shell in ``proxy.py`` writes it. Packets are
forwarded as the raw bytes they came in; the relay makes bytes of its own only where it
enforces:

- a CONNECT names the client; ``identify`` turns it into the address its events carry, or
  refuses it: then the client gets a refusing CONNACK (v5: 0x87 Not authorized; 3.1.1: 0x05),
  as a broker refuses bad credentials, the CONNECT never reaches the broker, and the
  connection closes;
- a blocked PUBLISH from a client is dropped; QoS 1/2 are acknowledged by the relay (v5:
  reason 0x87 Not authorized; 3.1.1: a plain PUBACK/PUBREC, then PUBCOMP for its PUBREL, as
  Mosquitto does); the broker never hears of that packet id;
- a SUBSCRIBE loses its blocked filters; the SUBACK the client gets has 0x80 (3.1.1) / 0x87
  (v5) in their positions; if every filter is blocked the relay answers alone;
- a blocked delivery (broker -> client PUBLISH) is dropped and acknowledged to the broker on
  the client's behalf (QoS 2: PUBREC, then PUBCOMP for the broker's PUBREL);
- a PUBLISH that uses a v5 topic alias whose defining packet was dropped gets its topic
  written back in, so the peer never sees an alias it does not know;
- a client that breaks the protocol is closed as the broker would close it (in every mode):
  the packets before the bad one are forwarded, then a v5 client that has had its CONNACK gets
  the DISCONNECT with the reason code the codec names; before that, and for 3.x, a bare close.
  The client's decoder applies the CONNACK's limits (topic alias maximum, packet size).

Which packet is which event is :func:`commgraph.adapters.mqtt.events.edges`. ``verdict``
answers each event (True: block it); it is the relay's one extension point (the engine in
production, a plain function in tests) and must not raise.

Signals: OPENED (:meth:`Relay.connection_opened`), ACTIVE at the first PUBLISH or SUBSCRIBE,
REFUSED for a CONNACK of the broker that refuses the client, MALFORMED for a protocol error of
the client, CLOSED (:meth:`Relay.connection_closed`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from commgraph.adapters.mqtt.codec import (
    Ack,
    Connack,
    Connect,
    MQTTDecodeError,
    MQTTDecoder,
    PacketType,
    Publish,
    Suback,
    Subscribe,
    encode_ack,
    encode_connack,
    encode_disconnect,
    encode_suback,
    encode_subscribe,
    with_topic,
)
from commgraph.adapters.mqtt.events import edges, publish_edge
from commgraph.detectors.guardrails import Signal

__all__ = [
    "FAILURE_V3",
    "NOT_AUTHORIZED_V3",
    "NOT_AUTHORIZED_V5",
    "ClientIdentity",
    "Close",
    "Identify",
    "Observed",
    "Output",
    "Relay",
    "RelayStats",
    "VerdictFor",
]

log = logging.getLogger("commgraph.proxy")

NOT_AUTHORIZED_V5: Final = 0x87
NOT_AUTHORIZED_V3: Final = 0x05  # CONNACK return code
FAILURE_V3: Final = 0x80  # SUBACK return code


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """What the proxy knows about a client when it connects."""

    client_id: str
    username: str | None
    cert_cn: str | None
    peer: str


# (ts, src, dst, relation, size) -> True: block this event
VerdictFor = Callable[[float, str, str, str, "int | None"], bool]
# (client, ts) -> the address its events carry, or None: refuse its CONNECT
Identify = Callable[[ClientIdentity, float], "str | None"]
# (src, dst, relation, size, blocked): an event the relay asked a verdict for
Observed = tuple[str, str, str, "int | None", bool]


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection: ``abort`` drops it at once, else what is written is flushed
    first. ``reason`` says why, for the log, at ``level``."""

    reason: str
    abort: bool
    level: int = logging.WARNING


class Output:
    """What one call of the relay asks the shell to do, in this order: write ``to_broker`` and
    ``to_client`` (each in order), tell the node ``signals``, then ``close`` if set.
    ``events`` are the events the relay asked verdicts for, with the answer."""

    # A plain class: one is made per read, on the proxy's hot path.
    __slots__ = ("close", "events", "signals", "to_broker", "to_client")

    def __init__(self, *, signals: list[Signal] | None = None) -> None:
        self.to_client: list[bytes] = []
        self.to_broker: list[bytes] = []
        self.events: list[Observed] = []
        self.signals: list[Signal] = [] if signals is None else signals
        self.close: Close | None = None

    def __repr__(self) -> str:
        return (
            f"Output(to_client={self.to_client!r}, to_broker={self.to_broker!r}, "
            f"events={self.events!r}, signals={self.signals!r}, close={self.close!r})"
        )


@dataclass(slots=True)
class RelayStats:
    """Counters the relays of one proxy share."""

    packets: int = 0
    decode_errors: int = 0
    refused: int = 0  # CONNECTs the node refused


class Relay:
    """One client connection's state: identity, protocol level, and what enforcement changed.

    ``peer`` (``ip:port``) and ``cert_cn`` (a TLS client certificate's commonName) go into the
    :class:`ClientIdentity`; ``max_packet_size`` bounds what both decoders take.
    """

    def __init__(
        self,
        verdict: VerdictFor,
        identify: Identify,
        *,
        peer: str = "?",
        cert_cn: str | None = None,
        max_packet_size: int = 16 * 1024 * 1024,
        stats: RelayStats | None = None,
    ) -> None:
        self.verdict = verdict
        self.identify = identify
        self.peer = peer
        self.cert_cn = cert_cn
        self.stats = stats if stats is not None else RelayStats()
        self.client_decoder = MQTTDecoder(from_client=True, max_packet_size=max_packet_size)
        self.broker_decoder = MQTTDecoder(from_client=False, max_packet_size=max_packet_size)
        self.address: str | None = None  # the engine's key for this client, after CONNECT
        self.identity: ClientIdentity | None = None
        self.v5 = False
        self.active = False  # it sent a PUBLISH or SUBSCRIBE
        self.closed = False  # an Output said close: nothing more is relayed
        # QoS 2 flows the relay answers itself (packet ids), per direction
        self.swallowed_from_client: set[int] = set()
        self.swallowed_from_broker: set[int] = set()
        # SUBSCRIBE packet id -> SUBACK codes of the blocked filters by position (None = broker)
        self.suback_plan: dict[int, list[int | None]] = {}
        # topic aliases whose defining PUBLISH was dropped, per direction
        self.aliases_unknown_to_broker: set[int] = set()
        self.aliases_unknown_to_client: set[int] = set()

    # -- connection lifecycle --------------------------------------------------------------

    def connection_opened(self) -> Output:
        """The connection was accepted (before any byte); the node may refuse it."""
        return Output(signals=[Signal.OPENED])

    def connection_closed(self) -> Output:
        """The connection is gone, from either side."""
        self.closed = True
        return Output(signals=[Signal.CLOSED])

    # -- client -> broker ------------------------------------------------------------------

    def client_data(self, data: bytes, now: float) -> Output:
        """Bytes the client sent, read at ``now``."""
        out = Output()
        if self.closed:
            return out
        error: MQTTDecodeError | None = None
        try:
            packets = self.client_decoder.feed(data)
        except MQTTDecodeError as exc:
            # The packets before the bad one go on first: the broker would have handled them.
            packets, error = list(exc.packets), exc
        self.stats.packets += len(packets)
        to_broker = out.to_broker
        for packet in packets:
            if type(packet) is Publish:
                if not self.active:
                    self._activate(out)
                self._client_publish(packet, now, out)
            elif type(packet) is Subscribe:
                if not self.active:
                    self._activate(out)
                self._subscribe(packet, now, out)
            elif type(packet) is Ack and packet.type is PacketType.PUBREL:
                if packet.packet_id in self.swallowed_from_client:
                    self.swallowed_from_client.discard(packet.packet_id)
                    out.to_client.append(
                        encode_ack(PacketType.PUBCOMP, packet.packet_id, v5=self.v5)
                    )
                else:
                    to_broker.append(packet.raw)
            elif type(packet) is Connect:
                if not self._connect(packet, now, out):
                    return out  # refused: nothing more of this client reaches the broker
                to_broker.append(packet.raw)
            else:
                to_broker.append(packet.raw)
        if error is not None:
            self._protocol_error(error, out)
        return out

    def _protocol_error(self, exc: MQTTDecodeError, out: Output) -> None:
        """Close on the client's decode error as the broker would: a v5 client that has had its
        CONNACK gets a DISCONNECT with the error's reason code first, any other a bare close."""
        self.stats.decode_errors += 1
        self.closed = True
        out.signals.append(Signal.MALFORMED)
        who = self.address or "no CONNECT"
        if not self.v5 or self.client_decoder.connack is None or exc.code is None:
            out.close = Close(f"closing {self.peer} ({who!r}): {exc}", abort=True)
            return
        out.to_client.append(encode_disconnect(exc.code, v5=True))
        out.close = Close(
            f"closing {self.peer} ({who!r}) with DISCONNECT 0x{exc.code:02x}: {exc}", abort=False
        )

    def _activate(self, out: Output) -> None:
        self.active = True
        out.signals.append(Signal.ACTIVE)

    def _connect(self, packet: Connect, now: float, out: Output) -> bool:
        """Identify the client; False if the node refuses it (answered and closed)."""
        self.v5 = packet.protocol_level == 5
        identity = ClientIdentity(packet.client_id, packet.username, self.cert_cn, self.peer)
        self.identity = identity
        self.address = self.identify(identity, now)
        if self.address is None:
            self.stats.refused += 1
            self.closed = True
            code = NOT_AUTHORIZED_V5 if self.v5 else NOT_AUTHORIZED_V3
            out.to_client.append(encode_connack(False, code, v5=self.v5))
            out.close = Close(
                f"refusing the CONNECT of {packet.client_id!r} from {self.peer}",
                abort=False,
                level=logging.INFO,
            )
            return False
        self.broker_decoder.protocol_level = packet.protocol_level
        # The will is a message the client may send: its edge is learned like any other.
        # (Blocking it would mean rewriting the CONNECT; a denied will is only reported.)
        for src, dst, relation, size in edges(packet, self.address, from_client=True):
            self._event(now, src, dst, relation, size, out)
        return True

    def _event(
        self, now: float, src: str, dst: str, relation: str, size: int | None, out: Output
    ) -> bool:
        """Ask the verdict on one event and note it; True: block it."""
        blocked = self.verdict(now, src, dst, relation, size)
        out.events.append((src, dst, relation, size, blocked))
        return blocked

    def _client_publish(self, packet: Publish, now: float, out: Output) -> None:
        if self.address is None:  # the decoder only lets PUBLISH through after CONNECT
            return
        src, dst, relation, size = publish_edge(packet, self.address, True)
        blocked = self.verdict(now, src, dst, relation, size)
        out.events.append((src, dst, relation, size, blocked))
        if blocked:
            if packet.topic_alias is not None and packet.topic_in_packet:
                self.aliases_unknown_to_broker.add(packet.topic_alias)
            self._answer_blocked_publish(packet, out)
            return
        out.to_broker.append(_forwardable(packet, self.aliases_unknown_to_broker, self.v5))

    def _answer_blocked_publish(self, packet: Publish, out: Output) -> None:
        if packet.qos == 0 or packet.packet_id is None:
            return
        reason = NOT_AUTHORIZED_V5 if self.v5 else 0
        if packet.qos == 1:
            out.to_client.append(
                encode_ack(PacketType.PUBACK, packet.packet_id, reason, v5=self.v5)
            )
        else:
            out.to_client.append(
                encode_ack(PacketType.PUBREC, packet.packet_id, reason, v5=self.v5)
            )
            # 3.1.1 clients go on with PUBREL, and some v5 clients do too despite 0x87: the
            # relay completes the flow itself; the broker never heard of this packet id.
            self.swallowed_from_client.add(packet.packet_id)

    def _subscribe(self, packet: Subscribe, now: float, out: Output) -> None:
        if self.address is None:
            return
        failure = NOT_AUTHORIZED_V5 if self.v5 else FAILURE_V3
        plan: list[int | None] = []
        allowed: list[tuple[str, int]] = []
        wanted = edges(packet, self.address, from_client=True)
        for (src, dst, relation, size), (topic_filter, options) in zip(
            wanted, packet.filters, strict=True
        ):
            if self._event(now, src, dst, relation, size, out):
                plan.append(failure)
            else:
                plan.append(None)
                allowed.append((topic_filter, options))
        if len(allowed) == len(packet.filters):
            out.to_broker.append(packet.raw)
        elif not allowed:
            out.to_client.append(encode_suback(packet.packet_id, [failure] * len(plan), v5=self.v5))
        else:
            self.suback_plan[packet.packet_id] = plan
            out.to_broker.append(
                encode_subscribe(
                    packet.packet_id, allowed, v5=self.v5, properties=packet.properties
                )
            )

    # -- broker -> client ------------------------------------------------------------------

    def broker_data(self, data: bytes, now: float) -> Output:
        """Bytes the broker sent for this client, read at ``now``."""
        out = Output()
        if self.closed:
            return out
        try:
            packets = self.broker_decoder.feed(data)
        except MQTTDecodeError as exc:
            self.stats.decode_errors += 1
            self.closed = True
            out.close = Close(f"the broker sent {self.peer} something unreadable: {exc}", True)
            return out
        self.stats.packets += len(packets)
        to_client = out.to_client
        for packet in packets:
            if type(packet) is Publish:
                if self.address is not None:
                    src, dst, relation, size = publish_edge(packet, self.address, False)
                    blocked = self.verdict(now, src, dst, relation, size)
                    out.events.append((src, dst, relation, size, blocked))
                    if blocked:
                        if packet.topic_alias is not None and packet.topic_in_packet:
                            self.aliases_unknown_to_client.add(packet.topic_alias)
                        self._acknowledge_for_client(packet, out)
                        continue
                to_client.append(_forwardable(packet, self.aliases_unknown_to_client, self.v5))
            elif type(packet) is Suback and packet.packet_id in self.suback_plan:
                to_client.append(self._merged_suback(packet))
            elif type(packet) is Connack:
                if packet.reason_code != 0 and (not self.v5 or packet.reason_code >= 0x80):
                    # the broker refused the client: bad credentials, not authorized, banned
                    out.signals.append(Signal.REFUSED)
                self.client_decoder.apply_connack(packet)  # its limits hold for the client now
                to_client.append(packet.raw)
            elif type(packet) is Ack and packet.type is PacketType.PUBREL:
                if packet.packet_id in self.swallowed_from_broker:
                    self.swallowed_from_broker.discard(packet.packet_id)
                    out.to_broker.append(
                        encode_ack(PacketType.PUBCOMP, packet.packet_id, v5=self.v5)
                    )
                else:
                    to_client.append(packet.raw)
            else:
                to_client.append(packet.raw)
        return out

    def _acknowledge_for_client(self, packet: Publish, out: Output) -> None:
        if packet.packet_id is None:
            return
        if packet.qos == 1:
            out.to_broker.append(encode_ack(PacketType.PUBACK, packet.packet_id, v5=self.v5))
        elif packet.qos == 2:
            out.to_broker.append(encode_ack(PacketType.PUBREC, packet.packet_id, v5=self.v5))
            self.swallowed_from_broker.add(packet.packet_id)

    def _merged_suback(self, packet: Suback) -> bytes:
        plan = self.suback_plan.pop(packet.packet_id)
        from_broker = iter(packet.reason_codes)
        if sum(code is None for code in plan) != len(packet.reason_codes):
            log.warning("SUBACK %d from the broker does not match its SUBSCRIBE", packet.packet_id)
            return packet.raw
        codes = [next(from_broker) if code is None else code for code in plan]
        return encode_suback(packet.packet_id, codes, v5=self.v5, properties=packet.properties)


def _forwardable(packet: Publish, unknown_aliases: set[int], v5: bool) -> bytes:
    """The bytes to forward for an allowed PUBLISH (re-encoded only for a lost alias)."""
    alias = packet.topic_alias
    if alias is None:
        return packet.raw
    if packet.topic_in_packet:
        unknown_aliases.discard(alias)
        return packet.raw
    if alias in unknown_aliases:
        unknown_aliases.discard(alias)
        return with_topic(packet, v5=v5)
    return packet.raw
