"""The MQTT proxy: sits in front of any broker, tells the engine every relationship, and in
protect mode blocks what is not allowed, as the broker's own ACL would.

One client connection is two asyncio protocols, :class:`_ClientSide` and :class:`_BrokerSide`,
each with a sans-I/O :class:`MQTTDecoder`. Packets are forwarded as the raw bytes they came
in; the proxy writes bytes of its own only where it enforces:

- a blocked PUBLISH from a client is dropped; QoS 1/2 are acknowledged by the proxy (v5:
  reason 0x87 Not authorized; 3.1.1: a plain PUBACK/PUBREC, then PUBCOMP, as Mosquitto does);
- a SUBSCRIBE loses its blocked filters; the SUBACK the client gets has 0x80 (3.1.1) / 0x87
  (v5) in their positions; if every filter is blocked the proxy answers alone;
- a blocked delivery (broker -> client PUBLISH) is dropped and acknowledged to the broker on
  the client's behalf;
- a PUBLISH that uses a v5 topic alias whose defining packet was dropped gets its topic
  written back in, so the peer never sees an alias it does not know;
- a CONNECT the node refuses (a denied newcomer or address in protect mode) is answered by
  the proxy with a refusing CONNACK (v5: 0x87 Not authorized; 3.1.1: 0x05 Not authorized),
  as a broker refuses bad credentials, and never reaches the broker.

What the protocol itself says about a client goes to ``signal``: connections opened, their
first PUBLISH or SUBSCRIBE, their close, CONNACKs the broker refused, and protocol errors.
The guardrails count them per address (brute force, fuzzing, connection floods).

A client that breaks the protocol is closed as the broker would close it (in every mode): the
packets before the bad one are forwarded, then a v5 client that has had its CONNACK gets the
DISCONNECT with the reason code the codec names; before that, and for 3.x, a bare close. The
client's decoder applies the CONNACK's limits (topic alias maximum, maximum packet size).

Backpressure: when one side's write buffer is full, the other side stops reading. Nothing is
buffered without bound; a packet larger than ``max_packet_size`` closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

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
from commgraph.config import Address, MQTTSettings
from commgraph.detectors.guardrails import Signal
from commgraph.engine import Verdict

__all__ = ["ClientIdentity", "MQTTProxy", "ProxyStats"]

log = logging.getLogger("commgraph.proxy")

NOT_AUTHORIZED_V5 = 0x87
NOT_AUTHORIZED_V3 = 0x05  # CONNACK return code
FAILURE_V3 = 0x80
_HIGH_WATER = 256 * 1024
# asyncio's default of 100 pending connections drops SYNs when a whole site reconnects at
# once (after a broker restart), and each dropped SYN costs its client a second.
_BACKLOG = 4096
_UPSTREAM_CONNECTS = 64


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """What the proxy knows about a client when it connects."""

    client_id: str
    username: str | None
    cert_cn: str | None
    peer: str


# (ts, src, dst, relation, size) -> verdict: the engine's observe_fields, or a test's function
Observe = Callable[[float, str, str, str, "int | None"], Verdict]
# (client, ts) -> the address its events carry, or None: refuse its CONNECT
Identify = Callable[[ClientIdentity, float], "str | None"]
# (signal, peer IP, ts, ever active, client if known) -> True: refuse this connection
OnSignal = Callable[[Signal, str, float, bool, "ClientIdentity | None"], bool]


@dataclass(slots=True)
class ProxyStats:
    """Counters for /metrics and the logs; only the event loop writes them."""

    connections_total: int = 0
    connections_open: int = 0
    packets: int = 0
    blocked: int = 0
    decode_errors: int = 0
    refused: int = 0  # CONNECTs the node refused
    engine_errors: int = 0
    upstream_errors: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class MQTTProxy:
    """Listens for MQTT clients and relays each to ``settings.upstream``.

    ``observe`` classifies an event (the engine); ``identify`` turns a connecting client into
    the address its events carry (the daemon binds it to a service). Both are called on the
    event loop and must not block.
    """

    def __init__(
        self,
        settings: MQTTSettings,
        observe: Observe,
        identify: Identify,
        *,
        node: str | None = None,
        clock: Callable[[], float] = time.time,
        release: Callable[[str], None] | None = None,
        signal: OnSignal | None = None,
    ) -> None:
        if settings.upstream is None or (settings.listen is None and settings.tls is None):
            raise ValueError("the proxy needs [mqtt] listen (or tls.listen) and upstream")
        self.settings = settings
        self.observe = observe
        self.identify = identify
        self.node = node
        self.clock = clock
        self.release = release
        self.on_signal = signal
        self.stats = ProxyStats()
        self._servers: list[asyncio.Server] = []
        self._connections: set[_ClientSide] = set()
        # A whole site reconnecting at once would overflow the broker's own accept queue
        # (Mosquitto's is ~100) and cost each dropped SYN a second: connect a few at a time.
        self.upstream_slots = asyncio.Semaphore(_UPSTREAM_CONNECTS)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the proxy listens (host, port), after :meth:`start`."""
        found = []
        for server in self._servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                found.append((host, port))
        return found

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.settings.listen is not None:
            self._servers.append(
                await loop.create_server(
                    lambda: _ClientSide(self, None),
                    self.settings.listen.host,
                    self.settings.listen.port,
                    reuse_address=True,
                    backlog=_BACKLOG,
                )
            )
        tls = self.settings.tls
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.cert, tls.key)
            if tls.ca is not None:
                context.load_verify_locations(tls.ca)
                context.verify_mode = (
                    ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
                )
            self._servers.append(
                await loop.create_server(
                    lambda: _ClientSide(self, tls.listen),
                    tls.listen.host,
                    tls.listen.port,
                    ssl=context,
                    reuse_address=True,
                    backlog=_BACKLOG,
                )
            )

    async def close(self) -> None:
        """Stop listening and close both sides of every connection."""
        for server in self._servers:
            server.close()
        for connection in list(self._connections):
            connection.close()
        for server in self._servers:
            await server.wait_closed()
        # Give the transports a turn to flush and report connection_lost.
        for _ in range(3):
            if not self._connections:
                break
            await asyncio.sleep(0.05)

    # -- called by the protocols ---------------------------------------------------------

    def signal(
        self, kind: Signal, ip: str, active: bool = False, client: ClientIdentity | None = None
    ) -> bool:
        """Tell the node about a connection; True: refuse it. Failures never stop traffic."""
        if self.on_signal is None:
            return False
        try:
            return self.on_signal(kind, ip, self.clock(), active, client)
        except Exception:
            self.stats.engine_errors += 1
            if self.stats.engine_errors <= 10 or self.stats.engine_errors % 1000 == 0:
                log.exception("the engine failed on a %s signal from %s", kind.value, ip)
            return False

    def verdict(self, ts: float, src: str, dst: str, relation: str, size: int | None) -> bool:
        """Whether to block this event; the engine failing never stops the traffic."""
        try:
            blocked = self.observe(ts, src, dst, relation, size).block
        except Exception:
            self.stats.engine_errors += 1
            if self.stats.engine_errors <= 10 or self.stats.engine_errors % 1000 == 0:
                log.exception(
                    "the engine failed on %s %s -> %s; %s (failures so far: %d)",
                    relation,
                    src,
                    dst,
                    "forwarding" if self.settings.fail_open else "blocking",
                    self.stats.engine_errors,
                )
            blocked = not self.settings.fail_open
        if blocked:
            self.stats.blocked += 1
        return blocked


class _Side(asyncio.Protocol):
    """What both halves share: a transport, a decoder, a peer, and backpressure."""

    transport: asyncio.Transport | None = None
    peer: _Side | None = None

    def pause_writing(self) -> None:
        # Our outgoing buffer is full: stop reading what would be written to it.
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def _setup(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # small packets must not wait for Nagle's algorithm
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class _ClientSide(_Side):
    """The client's connection to the proxy; owns the upstream half."""

    def __init__(self, proxy: MQTTProxy, tls_listener: Address | None) -> None:
        self.proxy = proxy
        self.tls = tls_listener is not None
        settings = proxy.settings
        self.decoder = MQTTDecoder(from_client=True, max_packet_size=settings.max_packet_size)
        self.broker: _BrokerSide | None = None
        self.address: str | None = None  # the engine's key for this client
        self.identity: ClientIdentity | None = None
        self.v5 = False
        self.peer_name = "?"
        self.ip = "?"
        self.opened = False  # the node was told this connection opened
        self.active = False  # it sent a PUBLISH or SUBSCRIBE
        self.cert_cn: str | None = None
        # QoS 2 flows the proxy answers itself (packet ids), per direction
        self.swallowed_from_client: set[int] = set()
        self.swallowed_from_broker: set[int] = set()
        # SUBSCRIBE packet id -> SUBACK codes of the blocked filters by position (None = broker)
        self.suback_plan: dict[int, list[int | None]] = {}
        # topic aliases whose defining PUBLISH was dropped, per direction
        self.aliases_unknown_to_broker: set[int] = set()
        self.aliases_unknown_to_client: set[int] = set()
        self.now = 0.0  # the clock at the current read
        self.early: bytes | None = None  # what came before the broker connection was up
        self.timeout: asyncio.TimerHandle | None = None
        self.opening: asyncio.Task[None] | None = None
        self.closed = False

    # -- connection lifecycle --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._setup(transport)
        peer = transport.get_extra_info("peername")
        self.peer_name = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.ip = str(peer[0]) if peer else "?"
        if self.tls:
            self.cert_cn = _common_name(transport.get_extra_info("peercert"))
        stats = self.proxy.stats
        stats.connections_total += 1
        stats.connections_open += 1
        self.proxy._connections.add(self)
        self.opened = True
        if self.proxy.signal(Signal.OPENED, self.ip):
            # an address the owner denied, or beyond its connection ceiling, in protect mode
            self.proxy.stats.refused += 1
            self.abort()
            return
        loop = asyncio.get_running_loop()
        self.timeout = loop.call_later(self.proxy.settings.connect_timeout, self._connect_timeout)
        self.opening = loop.create_task(self._open_upstream())

    async def _open_upstream(self) -> None:
        upstream = self.proxy.settings.upstream
        assert upstream is not None
        loop = asyncio.get_running_loop()
        try:
            async with self.proxy.upstream_slots:
                if self.closed:
                    return
                _, broker = await asyncio.wait_for(
                    loop.create_connection(lambda: _BrokerSide(self), upstream.host, upstream.port),
                    self.proxy.settings.connect_timeout,
                )
        except (TimeoutError, OSError) as exc:
            self.proxy.stats.upstream_errors += 1
            log.warning("cannot reach the broker at %s for %s: %s", upstream, self.peer_name, exc)
            self.close()
            return
        if self.closed:
            broker.close()
            return
        self.broker = broker
        self.peer = broker
        if self.early is not None:
            early, self.early = self.early, None
            self.data_received(early)
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def _connect_timeout(self) -> None:
        if self.address is not None or self.closed:
            return
        if self.early is not None:
            # Its bytes wait for our broker connection: not the client's delay. Look again.
            self.timeout = asyncio.get_running_loop().call_later(
                self.proxy.settings.connect_timeout, self._connect_timeout
            )
            return
        log.info("%s sent no CONNECT in time: closing", self.peer_name)
        self.close()

    def close(self) -> None:
        """Close both sides (pending writes are flushed first)."""
        if self.closed:
            return
        self.closed = True
        if self.timeout is not None:
            self.timeout.cancel()
        if self.transport is not None:
            self.transport.close()
        if self.broker is not None:
            self.broker.close()

    def abort(self) -> None:
        """Drop the connection at once (the client sent garbage)."""
        if self.transport is not None:
            self.transport.abort()
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()
        if self in self.proxy._connections:
            self.proxy._connections.discard(self)
            self.proxy.stats.connections_open -= 1
        if self.opened:
            self.opened = False
            self.proxy.signal(Signal.CLOSED, self.ip, self.active, self.identity)
        if self.address is not None and self.proxy.release is not None:
            address, self.address = self.address, None
            try:
                self.proxy.release(address)
            except Exception:
                log.exception("releasing %r failed", address)

    # -- client -> broker ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.broker is None:
            # The broker is not connected yet: keep this one read, read no more until it is.
            self.early = data if self.early is None else self.early + data
            if self.transport is not None:
                self.transport.pause_reading()
            return
        error: MQTTDecodeError | None = None
        try:
            packets = self.decoder.feed(data)
        except MQTTDecodeError as exc:
            # The packets before the bad one go on first: the broker would have handled them.
            packets, error = list(exc.packets), exc
        self.now = self.proxy.clock()  # one reading of the clock per read, not per packet
        out: list[bytes] = []
        for packet in packets:
            self.proxy.stats.packets += 1
            if type(packet) is Publish:
                if not self.active:
                    self._activate()
                self._client_publish(packet, out)
            elif type(packet) is Subscribe:
                if not self.active:
                    self._activate()
                self._subscribe(packet, out)
            elif type(packet) is Ack and packet.type is PacketType.PUBREL:
                if packet.packet_id in self.swallowed_from_client:
                    self.swallowed_from_client.discard(packet.packet_id)
                    self.write(encode_ack(PacketType.PUBCOMP, packet.packet_id, v5=self.v5))
                else:
                    out.append(packet.raw)
            elif type(packet) is Connect:
                if not self._connect(packet):
                    if out:  # what came before it in this read (nothing, a CONNECT is first)
                        self._to_broker(b"".join(out))
                    return  # refused: nothing more of this client reaches the broker
                out.append(packet.raw)
            else:
                out.append(packet.raw)
        if out:
            self._to_broker(b"".join(out) if len(out) > 1 else out[0])
        if error is not None:
            self._protocol_error(error)

    def _protocol_error(self, exc: MQTTDecodeError) -> None:
        """Close on the client's decode error as the broker would: a v5 client that has had its
        CONNACK gets a DISCONNECT with the error's reason code first, any other a bare close."""
        self.proxy.stats.decode_errors += 1
        self.proxy.signal(Signal.MALFORMED, self.ip, self.active, self.identity)
        who = self.address or "no CONNECT"
        if not self.v5 or self.decoder.connack is None or exc.code is None:
            log.warning("closing %s (%r): %s", self.peer_name, who, exc)
            self.abort()
            return
        log.warning(
            "closing %s (%r) with DISCONNECT 0x%02x: %s", self.peer_name, who, exc.code, exc
        )
        self.write(encode_disconnect(exc.code, v5=True))
        self.close()

    def _to_broker(self, data: bytes) -> None:
        if self.broker is not None:  # always: data_received waits for the broker
            self.broker.write(data)

    def _activate(self) -> None:
        self.active = True
        self.proxy.signal(Signal.ACTIVE, self.ip, True, self.identity)

    def _connect(self, packet: Connect) -> bool:
        """Identify the client; False if the node refuses it (answered and closed)."""
        self.v5 = packet.protocol_level == 5
        if self.timeout is not None:
            self.timeout.cancel()
            self.timeout = None
        identity = ClientIdentity(packet.client_id, packet.username, self.cert_cn, self.peer_name)
        self.identity = identity
        self.address = self.proxy.identify(identity, self.now)
        if self.address is None:
            self.proxy.stats.refused += 1
            log.info("refusing the CONNECT of %r from %s", packet.client_id, self.peer_name)
            code = NOT_AUTHORIZED_V5 if self.v5 else NOT_AUTHORIZED_V3
            self.write(encode_connack(False, code, v5=self.v5))
            self.close()
            return False
        if self.broker is not None:
            self.broker.decoder.protocol_level = packet.protocol_level
        if packet.will_topic is not None:
            # The will is a message the client may send: its edge is learned like any other.
            # (Blocking it would mean rewriting the CONNECT; a denied will is only reported.)
            self._event(packet.will_topic, "publish", None)
        return True

    def _event(self, topic: str, relation: str, size: int | None) -> bool:
        """Observe client <-> topic at the time of the current read; True: block it."""
        assert self.address is not None
        if relation == "deliver":
            return self.proxy.verdict(self.now, topic, self.address, relation, size)
        return self.proxy.verdict(self.now, self.address, topic, relation, size)

    def _client_publish(self, packet: Publish, out: list[bytes]) -> None:
        if self.address is None:  # the decoder only lets PUBLISH through after CONNECT
            return
        if self._event(packet.topic, "publish", packet.payload_size):
            if packet.topic_alias is not None and packet.topic_in_packet:
                self.aliases_unknown_to_broker.add(packet.topic_alias)
            self._answer_blocked_publish(packet)
            return
        out.append(_forwardable(packet, self.aliases_unknown_to_broker, self.v5))

    def _answer_blocked_publish(self, packet: Publish) -> None:
        if packet.qos == 0 or packet.packet_id is None:
            return
        reason = NOT_AUTHORIZED_V5 if self.v5 else 0
        if packet.qos == 1:
            self.write(encode_ack(PacketType.PUBACK, packet.packet_id, reason, v5=self.v5))
        else:
            self.write(encode_ack(PacketType.PUBREC, packet.packet_id, reason, v5=self.v5))
            # 3.1.1 clients go on with PUBREL, and some v5 clients do too despite 0x87: the
            # proxy completes the flow itself; the broker never heard of this packet id.
            self.swallowed_from_client.add(packet.packet_id)

    def _subscribe(self, packet: Subscribe, out: list[bytes]) -> None:
        if self.address is None:
            return
        failure = NOT_AUTHORIZED_V5 if self.v5 else FAILURE_V3
        plan: list[int | None] = []
        allowed: list[tuple[str, int]] = []
        for topic_filter, options in packet.filters:
            if self._event(topic_filter, "subscribe", None):
                plan.append(failure)
            else:
                plan.append(None)
                allowed.append((topic_filter, options))
        if len(allowed) == len(packet.filters):
            out.append(packet.raw)
        elif not allowed:
            self.write(encode_suback(packet.packet_id, [failure] * len(plan), v5=self.v5))
        else:
            self.suback_plan[packet.packet_id] = plan
            out.append(
                encode_subscribe(
                    packet.packet_id, allowed, v5=self.v5, properties=packet.properties
                )
            )

    # -- broker -> client, called by _BrokerSide --------------------------------------------

    def from_broker(self, packets: list[object]) -> None:
        self.now = self.proxy.clock()
        out: list[bytes] = []
        for packet in packets:
            self.proxy.stats.packets += 1
            if type(packet) is Publish:
                if self.address is not None and self._event(
                    packet.topic, "deliver", packet.payload_size
                ):
                    if packet.topic_alias is not None and packet.topic_in_packet:
                        self.aliases_unknown_to_client.add(packet.topic_alias)
                    self._acknowledge_for_client(packet)
                    continue
                out.append(_forwardable(packet, self.aliases_unknown_to_client, self.v5))
            elif type(packet) is Suback and packet.packet_id in self.suback_plan:
                out.append(self._merged_suback(packet))
            elif type(packet) is Connack:
                if packet.reason_code != 0 and (not self.v5 or packet.reason_code >= 0x80):
                    # the broker refused the client: bad credentials, not authorized, banned
                    self.proxy.signal(Signal.REFUSED, self.ip, self.active, self.identity)
                self.decoder.apply_connack(packet)  # its limits hold for the client from now on
                out.append(packet.raw)
            elif type(packet) is Ack and packet.type is PacketType.PUBREL:
                if packet.packet_id in self.swallowed_from_broker:
                    self.swallowed_from_broker.discard(packet.packet_id)
                    assert self.broker is not None
                    self.broker.write(encode_ack(PacketType.PUBCOMP, packet.packet_id, v5=self.v5))
                else:
                    out.append(packet.raw)
            else:
                out.append(packet.raw)  # type: ignore[attr-defined]
        if out:
            self.write(b"".join(out) if len(out) > 1 else out[0])

    def _acknowledge_for_client(self, packet: Publish) -> None:
        if packet.packet_id is None or self.broker is None:
            return
        if packet.qos == 1:
            self.broker.write(encode_ack(PacketType.PUBACK, packet.packet_id, v5=self.v5))
        elif packet.qos == 2:
            self.broker.write(encode_ack(PacketType.PUBREC, packet.packet_id, v5=self.v5))
            self.swallowed_from_broker.add(packet.packet_id)

    def _merged_suback(self, packet: Suback) -> bytes:
        plan = self.suback_plan.pop(packet.packet_id)
        from_broker = iter(packet.reason_codes)
        if sum(code is None for code in plan) != len(packet.reason_codes):
            log.warning("SUBACK %d from the broker does not match its SUBSCRIBE", packet.packet_id)
            return packet.raw
        codes = [next(from_broker) if code is None else code for code in plan]
        return encode_suback(packet.packet_id, codes, v5=self.v5, properties=packet.properties)


class _BrokerSide(_Side):
    """The proxy's connection to the broker for one client."""

    def __init__(self, client: _ClientSide) -> None:
        self.client = client
        self.peer = client
        self.decoder = MQTTDecoder(
            from_client=False,
            max_packet_size=client.proxy.settings.max_packet_size,
            protocol_level=client.decoder.protocol_level,
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._setup(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        try:
            packets = self.decoder.feed(data)
        except MQTTDecodeError as exc:
            self.client.proxy.stats.decode_errors += 1
            log.warning("the broker sent %s something unreadable: %s", self.client.peer_name, exc)
            self.client.abort()
            return
        self.client.from_broker(list(packets))

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


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


def _common_name(cert: object) -> str | None:
    """The subject commonName of a peer certificate as ``ssl`` reports it."""
    if not isinstance(cert, dict):
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
